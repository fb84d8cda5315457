"""Can the default LM learn question-level answers at all? A check without RL's noise.

RL fine-tuning of the small default LM on the demo's synthetic task ends with one answer
for every question (docs/results_lm.md). This script asks whether that is a limit of the
model or of the RL signal: it starts from the same warm-started model and maximises the
*exact* expected log score of the answer distribution at the answer position,

    J(theta) = mean over questions i of  sum_a pi_theta(a | prompt_i) * s(a, t_i),
    s(a, t) = t log a + (1 - t) log(1 - a),

with ``t_i = p*_i`` (``--target p_star``: no outcome noise, no sampling of answers) or
``t_i ~ Bernoulli(p*_i)`` drawn anew at every visit (``--target outcome``: the outcome
noise RL sees, still without sampling answers). Its maximiser puts all mass on the grid
answer closest to ``t_i``, as RL's does, so the only differences from RL are the noise
of sampled answers (and, with ``p_star``, of outcomes).

It reads a finished pipeline run (default ``runs/demo``: ``bioreason demo`` writes it)
and trains on its train questions, then prints, for each learning rate, the held-out
questions' correlation of ``q`` (the mean of the answer distribution) with p*, the mean
``|q - p*|``, and the standard deviation of ``q`` across questions, beside two reference
predictors built from the train questions: the mean p* (one answer for all) and the
additive fit ``condition mean + program mean - overall mean``, and the interaction fit
(:func:`interaction_reference`: a ridge regression of logit p* on the condition's
parts, the program and every part x program pair: every feature of the prompt, fitted
to the train questions' exact p*).

What is trained is the run's RL setting (``finetune.rl.trainable`` of its
``pipeline.json``; ``--trainable`` overrides it), so the fit is of the model RL trains.
``--objective ce`` replaces the expected log score by the cross-entropy to the grid
answer nearest ``t_i``: a check of what the model can represent, since the expected
score is a bandit objective whose gradient fades as the answer distribution
concentrates. Each fit is scored on the train questions as well (``..._train_...``):
how much of the questions it learned, apart from how much generalises. ``--split``
splits the questions anew for the references and the fits (e.g.
``heldout_combinations``: held-out pairs of perturbations seen alone).

    python benchmarks/lm_question_fit.py [--run runs/demo] [--lrs 5e-4 1e-4]
        [--steps 1000] [--target p_star|outcome] [--objective score|ce]
        [--trainable all|embeddings] [--split heldout_combinations] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bioreason.data.tasks import SPLITS

OBJECTIVES = ("score", "ce")


def run_trainable(run: Path) -> str:
    """What RL trained in ``run``: ``finetune.rl.trainable`` of its ``pipeline.json``
    (``"all"``, the :class:`bioreason.rl.LMRLConfig` default, when the record lacks it).

    Returns
    -------
    str
    """
    record = run / "pipeline.json"
    if not record.exists():
        return "all"
    config = json.loads(record.read_text()).get("config", {})
    return str(((config.get("finetune") or {}).get("rl") or {}).get("trainable", "all"))


def question_figures(q, p) -> dict[str, float]:
    """``corr`` (Pearson, NaN when the answers are all equal), ``mae`` (mean |q - p|) and
    ``sd_q`` (sd of the answers, ddof 1) of answers ``q`` against references ``p``
    (arrays or tensors).

    Returns
    -------
    dict
    """
    q = np.asarray(q, dtype=float)
    p = np.asarray(p, dtype=float)
    spread = float(q.std(ddof=1)) if len(q) > 1 else 0.0
    return {
        "corr": float(np.corrcoef(q, p)[0, 1]) if spread > 0 else float("nan"),
        "mae": float(np.abs(q - p).mean()),
        "sd_q": spread,
    }


def _task(run: Path, split: str | None = None, test_fraction: float = 0.5) -> pd.DataFrame:
    """The run's task table; with ``split``, its questions split anew
    (:func:`bioreason.data.tasks.split_questions`, seed 0, no validation split)."""
    from bioreason.data.tasks import split_questions

    task = pd.read_parquet(run / "task" / "task.parquet")
    if split is not None:
        task["split"] = split_questions(task, split, test_fraction, 0.0, 0)
    return task


def _fit(
    run: Path,
    lr: float,
    steps: int,
    target: str,
    batch: int,
    seed: int,
    trainable: str = "all",
    objective: str = "score",
    split: str | None = None,
    test_fraction: float = 0.5,
) -> dict:
    """The seed-0 warm start of ``run`` fitted to its train questions (see the module's
    docstring). Returns ``corr``, ``mae``, ``sd_q`` on the test questions, the same with
    the prefix ``train_`` on the train questions, and ``seconds``."""
    from bioreason.lm import load_predictor
    from bioreason.rl import LMRLConfig, LMTrainer
    from bioreason.rl.lm.rollout import answer_distribution_at

    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {list(OBJECTIVES)}, got {objective!r}")
    task = _task(run, split, test_fraction)
    predictor = load_predictor(run / "warm_start" / "seed0" / "model")
    config = LMRLConfig(
        method="rloo",
        steps=1,
        eval_split=None,
        device="cpu",
        tensorboard=False,
        trainable=trainable,
    )
    trainer = LMTrainer.from_predictor(predictor, task, config)
    if trainer.answer_token_ids is None:
        raise SystemExit("lm_question_fit: the answers are not single tokens")
    model, answer_ids = trainer.model, trainer.answer_token_ids
    grid = trainer._grid_probs.float()
    log_a, log_b = torch.log(grid), torch.log1p(-grid)
    split = task["split"].astype(str).to_numpy()
    train, test = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    p_star = torch.as_tensor(task["p_star"].to_numpy(), dtype=torch.float32)
    # what RL trains: every parameter, or the token embeddings only (config.trainable)
    optimizer = torch.optim.AdamW(trainer._policy_parameters, lr=lr)
    generator = torch.Generator().manual_seed(seed)

    def answers(rows: np.ndarray, grad: bool) -> torch.Tensor:
        prompts = trainer._prompts(rows.tolist(), with_prefix=True)
        with torch.set_grad_enabled(grad):
            if not grad:
                d = answer_distribution_at(model, prompts, answer_ids).float()
                return d / d.sum(1, keepdim=True)
            logits = model(
                prompts.input_ids,
                attention_mask=prompts.attention_mask,
                position_ids=prompts.position_ids(),
            ).logits
            return torch.softmax(logits[:, -1, answer_ids], -1)

    start = time.perf_counter()
    for _ in range(steps):
        rows = train[torch.randint(len(train), (batch,), generator=generator).numpy()]
        t = p_star[rows]
        if target == "outcome":
            t = torch.bernoulli(t, generator=generator)
        pi = answers(rows, grad=True)
        if objective == "ce":  # the grid answer nearest the target, as a label
            nearest = (t[:, None] - grid[None]).abs().argmin(1, keepdim=True)
            loss = -torch.log(pi.gather(1, nearest).clamp_min(1e-12)).mean()
        else:
            score = t[:, None] * log_a[None] + (1 - t[:, None]) * log_b[None]
            loss = -(pi * score).sum(1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    result = question_figures(answers(test, grad=False) @ grid, p_star[test])
    in_sample = question_figures(answers(train, grad=False) @ grid, p_star[train])
    result.update({f"train_{name}": value for name, value in in_sample.items()})
    result["seconds"] = seconds
    return result


def additive_reference(task: pd.DataFrame) -> dict[str, float]:
    """The additive fit from the train questions' exact p*, scored on the test questions.

    ``condition mean + program mean - overall mean`` of the train questions' p*
    (clipped to [0.01, 0.99]; a condition or program with no train question takes the
    overall mean). It knows p* exactly where RL sees only Bernoulli outcomes, and it
    composes a condition with a program additively, the way the held-out questions of a
    random split must be answered; it is the ceiling a question-level LM is judged
    against.

    Parameters
    ----------
    task : pandas.DataFrame
        The task table (``split``, ``condition``, ``readout``, ``p_star``).

    Returns
    -------
    dict
        ``mae``: mean |additive - p*| over the test questions; ``corr``: their Pearson
        correlation; ``sd_q``: the sd of the additive answers across test questions.
    """
    train, test = task[task["split"] == "train"], task[task["split"] == "test"]
    mean = train["p_star"].mean()
    by_condition = test["condition"].map(train.groupby("condition")["p_star"].mean())
    by_program = test["readout"].map(train.groupby("readout")["p_star"].mean())
    additive = (by_condition.fillna(mean) + by_program.fillna(mean) - mean).clip(0.01, 0.99)
    p_star = test["p_star"].to_numpy(dtype=float)
    return question_figures(additive.to_numpy(dtype=float), p_star)


INTERACTION_LAMBDAS = (0.1, 0.3, 1.0, 3.0, 10.0)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 0.01, 0.99)
    return np.log(p / (1 - p))


def _interaction_features(
    frame: pd.DataFrame, parts: dict[str, int], readouts: dict[str, int], delimiter: str
) -> np.ndarray:
    """One row per question: an intercept, each part of the condition, the readout and
    each part x readout pair (indicators; parts or readouts outside the dictionaries
    contribute nothing)."""
    n_parts, n_readouts = len(parts), len(readouts)
    features = np.zeros((len(frame), 1 + n_parts + n_readouts + n_parts * n_readouts))
    features[:, 0] = 1.0
    conditions = frame["condition"].astype(str).to_numpy()
    programs = frame["readout"].astype(str).to_numpy()
    for row, (condition, readout) in enumerate(zip(conditions, programs, strict=True)):
        r = readouts.get(readout)
        if r is not None:
            features[row, 1 + n_parts + r] = 1.0
        for part in condition.split(delimiter):
            g = parts.get(part)
            if g is None:
                continue
            features[row, 1 + g] = 1.0
            if r is not None:
                features[row, 1 + n_parts + n_readouts + g * n_readouts + r] = 1.0
    return features


def _ridge(features: np.ndarray, target: np.ndarray, lam: float) -> np.ndarray:
    penalty = lam * np.eye(features.shape[1])
    penalty[0, 0] = 0.0  # the intercept is not shrunk
    return np.linalg.solve(features.T @ features + penalty, features.T @ target)


def interaction_reference(
    task: pd.DataFrame,
    lambdas: tuple[float, ...] = INTERACTION_LAMBDAS,
    folds: int = 5,
    seed: int = 0,
    delimiter: str = "+",
) -> dict[str, float]:
    """The interaction fit from the train questions' exact p*, scored on the test questions.

    A ridge regression of logit p* (p* clipped to [0.01, 0.99]) on the question's parts:
    each perturbation of the condition (``A+B`` has parts ``A`` and ``B``), the readout,
    and every part x readout pair, so that a combination's answer on a program is built
    from its parts' answers on that program. The ridge penalty is chosen among
    ``lambdas`` by ``folds``-fold cross-validation on the train questions (mean
    |answer - p*|). It knows p* exactly and uses every feature the prompt offers (which
    perturbations, which program), linearly in logit space: a reference for how far
    the held-out questions can be predicted from the train questions. It is not a bound:
    a nonlinear rule (a pair's answer as the larger of its parts', say) can do better.

    Parameters
    ----------
    task : pandas.DataFrame
        The task table (``split``, ``condition``, ``readout``, ``p_star``).
    lambdas, folds, seed, delimiter
        The penalties tried, the cross-validation's folds and seed, and the separator of
        a combination's parts.

    Returns
    -------
    dict
        ``mae``, ``corr``, ``sd_q`` on the test questions (as
        :func:`additive_reference`), and ``lambda``, the chosen penalty.
    """
    if not lambdas or min(lambdas) <= 0:
        raise ValueError(f"lambdas must be positive, got {lambdas}")
    train, test = task[task["split"] == "train"], task[task["split"] == "test"]
    if len(train) < 2 or len(test) == 0:
        raise ValueError("interaction_reference needs >= 2 train questions and a test split")
    parts = sorted({part for c in train["condition"].astype(str) for part in c.split(delimiter)})
    readouts = sorted(set(train["readout"].astype(str)))
    part_index = {part: i for i, part in enumerate(parts)}
    readout_index = {readout: i for i, readout in enumerate(readouts)}
    x_train = _interaction_features(train, part_index, readout_index, delimiter)
    p_train = train["p_star"].to_numpy(dtype=float)
    y_train = _logit(p_train)
    fold_of = np.random.default_rng(seed).permutation(len(train)) % min(folds, len(train))
    errors = []
    for lam in lambdas:
        error = 0.0
        for fold in np.unique(fold_of):
            fit, held = fold_of != fold, fold_of == fold
            weights = _ridge(x_train[fit], y_train[fit], lam)
            answers = 1 / (1 + np.exp(-x_train[held] @ weights))
            error += np.abs(answers - p_train[held]).sum()
        errors.append(error / len(train))
    lam = lambdas[int(np.argmin(errors))]
    weights = _ridge(x_train, y_train, lam)
    answers = 1 / (
        1 + np.exp(-_interaction_features(test, part_index, readout_index, delimiter) @ weights)
    )
    p_star = test["p_star"].to_numpy(dtype=float)
    return {
        **question_figures(answers, p_star),
        "lambda": float(lam),
    }


def _references(run: Path, split: str | None = None, test_fraction: float = 0.5) -> dict:
    task = _task(run, split, test_fraction)
    train, test = task[task["split"] == "train"], task[task["split"] == "test"]
    additive = additive_reference(task)
    return {
        "constant": float((test["p_star"] - train["p_star"].mean()).abs().mean()),
        "additive": additive["mae"],
        "additive_corr": additive["corr"],
        "additive_sd": additive["sd_q"],
        **{f"interaction_{k}": v for k, v in interaction_reference(task).items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="a finished run")
    parser.add_argument("--lrs", type=float, nargs="+", default=[5e-4, 1e-4])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32, help="questions per step")
    parser.add_argument("--target", choices=("p_star", "outcome"), default="p_star")
    parser.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="score",
        help="score: the expected log score RL maximises; ce: cross-entropy to the nearest answer",
    )
    parser.add_argument(
        "--split",
        choices=SPLITS,
        help="split the run's questions anew (default: the run's split), e.g. "
        "heldout_combinations: are unseen pairs of seen perturbations predictable?",
    )
    parser.add_argument("--test-fraction", type=float, default=0.5, help="with --split")
    parser.add_argument(
        "--trainable",
        choices=("all", "embeddings"),
        help="what the fit trains (default: the run's finetune.rl.trainable)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    for needed in ("task/task.parquet", "warm_start/seed0/model/config.json"):
        if not (args.run / needed).exists():
            print(
                f"lm_question_fit: {args.run / needed} is missing; run `bioreason demo "
                f"--out {args.run}` first (or pass --run with a finished run folder)",
                file=sys.stderr,
            )
            return 2
    torch.set_num_threads(args.threads)
    references = _references(args.run, args.split, args.test_fraction)
    print(f"reference_constant_mae_p_star: {references['constant']:.3f}")
    print(f"reference_additive_mae_p_star: {references['additive']:.3f}")
    print(f"reference_additive_corr_p_star: {references['additive_corr']:.3f}")
    print(f"reference_additive_sd_q: {references['additive_sd']:.3f}")
    print(f"reference_interaction_mae_p_star: {references['interaction_mae']:.3f}")
    print(f"reference_interaction_corr_p_star: {references['interaction_corr']:.3f}")
    print(f"reference_interaction_sd_q: {references['interaction_sd_q']:.3f}")
    trainable = args.trainable or run_trainable(args.run)
    for lr in args.lrs:
        result = _fit(
            args.run,
            lr,
            args.steps,
            args.target,
            args.batch,
            args.seed,
            trainable,
            args.objective,
            args.split,
            args.test_fraction,
        )
        name = f"fit_{args.target}" + ("_ce" if args.objective == "ce" else "") + f"_lr{lr:g}"
        for split in ("", "train_"):
            print(f"{name}_{split}corr_p_star: {result[split + 'corr']:.3f}")
            print(f"{name}_{split}mae_p_star: {result[split + 'mae']:.3f}")
            print(f"{name}_{split}sd_q: {result[split + 'sd_q']:.3f}")
        print(f"{name}_time: {result['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
