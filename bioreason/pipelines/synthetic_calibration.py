"""The synthetic calibration experiment (Bereket & Leskovec 2025), behind
``bioreason synthetic-calibration`` and ``pipelines/synthetic_calibration.py``.

10,000 questions in 20 categories; category c has a true probability p_c ~ U(0, 1);
each question's outcome is drawn once (p_c and the outcomes from independent streams
of the seed). A tabular policy (per category, a categorical over the answers
0.01..0.99, zero-initialised logits) is trained with the log-score reward by each
advantage estimator; a prediction is the mean of 100 sampled answers. Metrics are
reported against the outcomes, against p_c and against each category's empirical
outcome rate (what an unbiased method converges to when outcomes are fixed).

Layout of the output folder::

    DIR/pipeline.json          marks the folder as ours (config of the last invocation)
    DIR/questions.csv          question, category, p_star, outcome
    DIR/metrics.csv            one row per run
    DIR/<run>.png              true p_c against predicted probability, per category
    DIR/runs/<run>/            manifest.json, result.json, log.csv, checkpoint.pt,
                               predictions.csv, reliability.png, histogram.png
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bioreason._io import atomic_path, atomic_write_text
from bioreason.calibration import (
    plot_prediction_histogram,
    plot_reference,
    plot_reliability_diagram,
    summarize,
)
from bioreason.config import Config
from bioreason.rl import (
    ADVANTAGES,
    AnswerGrid,
    TabularPolicy,
    TabularRLConfig,
    TabularTrainer,
    get_advantage,
    parse_method,
)
from bioreason.rl.theory import theory_fixed_point, theory_kind, theory_target
from bioreason.stage import manifest_matches, write_manifest

__all__ = [
    "DEFAULT_METHODS",
    "SyntheticCalibrationConfig",
    "plan_runs",
    "run_synthetic_calibration",
]

DEFAULT_METHODS = ["grpo", "grpo_no_std", "rloo", "reinforce", "ppo"]


@dataclasses.dataclass
class SyntheticCalibrationConfig(Config):
    """Settings of the synthetic calibration experiment (defaults: the paper's).

    Parameters
    ----------
    n_questions : int, default 10_000
        Questions, assigned to categories round-robin (500 per category by default).
    n_categories : int, default 20
        Categories; category c has p_c ~ U(0, 1).
    methods : list of str, default ``["grpo", "grpo_no_std", "rloo", "reinforce", "ppo"]``
        Advantage estimators, method names with their options
        (``h_target:log``, ``seed_grpo:base=grpo`` ...); one run each.
    offline : bool, default False
        Also run each method offline: ``offline_updates`` updates per rollout under the
        clipped surrogate, once per clip in ``offline_clips``.
    offline_updates : int, default 10
        Updates per rollout of the offline runs (``rl.steps / offline_updates`` rollouts).
    offline_clips : list of float, default ``[0.2, 0.001]``
        Clip of the importance ratio, one offline run each.
    group_sizes : dict, default ``{"reinforce": 1, "ppo": 1}``
        Per-method group size (by full method name, else by registry name); other
        methods use ``rl.group_size``.
    n_eval_samples : int, default 100
        Answers averaged into one prediction.
    n_bins : int, default 10
        Equal-width bins of the ECE (and MCE, ECE to reference).
    bin_right : bool, default False
        Bin-edge convention: False ``[a, b)`` (this project's tables), True ``(a, b]``
        as ``pandas.cut`` (the Uncalibrated Reasoning code); see
        :mod:`bioreason.calibration.metrics`.
    n_boot : int, default 200
        Bootstrap replicates for the confidence intervals (0: none).
    seed : int, default 0
        Seeds p_c, the outcomes and the evaluation draws.
    rl : TabularRLConfig, default ``TabularRLConfig()``
        The trainer settings every run shares (steps 50,000, group size 10, AdamW lr
        3e-3 and weight decay 0.01, value lr 1e-5, log-score reward, checkpoint every
        5,000 and log every 1,000 steps, training seed 0). ``rl.method`` is replaced by
        each entry of ``methods``; the offline runs replace ``updates_per_rollout`` and
        ``clip_eps``; ``rl.advantage_options`` go to every method.
    """

    n_questions: int = 10_000
    n_categories: int = 20
    methods: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_METHODS))
    offline: bool = False
    offline_updates: int = 10
    offline_clips: list[float] = dataclasses.field(default_factory=lambda: [0.2, 0.001])
    group_sizes: dict = dataclasses.field(default_factory=lambda: {"reinforce": 1, "ppo": 1})
    n_eval_samples: int = 100
    n_bins: int = 10
    bin_right: bool = False
    n_boot: int = 200
    seed: int = 0
    rl: TabularRLConfig = dataclasses.field(default_factory=TabularRLConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check the settings (run again by :func:`run_synthetic_calibration`, so a
        config changed after construction is checked before anything is written).

        Raises
        ------
        ValueError, TypeError
            Unknown methods (listing the choices), a method listed twice (also under
            another spelling of the same options), a repeated offline clip, a
            ``group_sizes`` key that names no estimator, or sizes out of range.
        """
        if not self.methods:
            raise ValueError("methods must name at least one advantage estimator")
        seen: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
        for method in self.methods:
            # raises with the list of valid names, or says the theory is missing
            get_advantage(method, **self.rl.advantage_options)
            theory_kind(method, self.rl.advantage_options)
            base, options = parse_method(method)
            key = (base, tuple(sorted((name, repr(value)) for name, value in options.items())))
            if key in seen:
                spelling = "" if seen[key] == method else f" (as {seen[key]!r} and {method!r})"
                raise ValueError(
                    f"methods lists {method!r} more than once{spelling}; each method is one "
                    "run and one row of metrics.csv: remove the duplicate"
                )
            seen[key] = method
        run_names: dict[str, float] = {}
        for clip in self.offline_clips:
            name = _run_name("m", clip)
            if name in run_names:
                raise ValueError(
                    f"offline_clips lists {clip:g} more than once ({run_names[name]!r} and "
                    f"{clip!r} name the same run); remove the duplicate"
                )
            run_names[name] = clip
        for key, size in self.group_sizes.items():
            if not isinstance(key, str) or key.partition(":")[0] not in ADVANTAGES:
                raise ValueError(
                    f"group_sizes has a key {key!r} that names no advantage estimator; "
                    f"choose one of {sorted(ADVANTAGES)} or a method of methods"
                )
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ValueError(f"group_sizes[{key!r}] must be an integer >= 1, got {size!r}")
        if self.n_questions < self.n_categories or self.n_categories < 1:
            raise ValueError("need n_categories >= 1 and n_questions >= n_categories")
        if self.n_eval_samples < 1 or self.offline_updates < 1:
            raise ValueError("n_eval_samples and offline_updates must be >= 1")
        if self.n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {self.n_bins}")
        if self.n_boot < 0:
            raise ValueError(f"n_boot must be >= 0 (0: no intervals), got {self.n_boot}")


def _run_name(method: str, clip: float | None) -> str:
    return method if clip is None else f"{method}_offline_clip{clip:g}"


def _group_size(config: SyntheticCalibrationConfig, method: str) -> int:
    for key in (method, method.partition(":")[0]):
        if key in config.group_sizes:
            return int(config.group_sizes[key])
    return config.rl.group_size


def plan_runs(config: SyntheticCalibrationConfig) -> list[tuple[str, TabularRLConfig]]:
    """The runs of an invocation: (name, trainer config), online first.

    Raises a ValueError if the config is invalid (:meth:`SyntheticCalibrationConfig.validate`).
    """
    config.validate()
    variants: list[tuple[float | None, int]] = [(None, 1)]
    if config.offline:
        variants += [(clip, config.offline_updates) for clip in config.offline_clips]
    runs = []
    for clip, updates in variants:
        for method in config.methods:
            rl_config = dataclasses.replace(
                config.rl,
                method=method,
                group_size=_group_size(config, method),
                updates_per_rollout=updates,
                clip_eps=config.rl.clip_eps if clip is None else clip,
            )
            runs.append((_run_name(method, clip), rl_config))
    return runs


def _questions(config: SyntheticCalibrationConfig) -> pd.DataFrame:
    """The question set: category probabilities p_c and one outcome per question.

    p_c and the outcomes come from independent streams of one seed
    (``numpy.random.SeedSequence(seed).spawn(2)``): drawing both from generators with
    the same seed would correlate an outcome with the uniform draw that made its p_c.
    """
    p_stream, outcome_stream = np.random.SeedSequence(config.seed).spawn(2)
    p_category = np.random.default_rng(p_stream).random(config.n_categories)
    categories = np.arange(config.n_questions) % config.n_categories
    p_star = p_category[categories]
    outcomes = np.random.default_rng(outcome_stream).random(config.n_questions) < p_star
    return pd.DataFrame(
        {
            "question": np.arange(config.n_questions),
            "category": categories,
            "p_star": p_star,
            "outcome": outcomes.astype(np.int64),
        }
    )


def _check_output_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder; choose another --out")
    if out.exists() and any(out.iterdir()) and not (out / "pipeline.json").exists():
        raise FileExistsError(
            f"{out} is not empty and was not written by synthetic-calibration; "
            "choose an empty or new folder for --out"
        )


def _safe(name: str) -> str:
    return name.replace(":", "-").replace("=", "_").replace(",", "-")


def _preflight(runs: list[tuple[str, TabularRLConfig]]) -> None:
    """One training step of every planned run on a two-question problem, so that a
    method that cannot run with its settings (rejection sampling with a scoring-rule
    reward, RLOO with one rollout, ...) fails before any run trains."""
    categories = torch.tensor([0, 1])
    outcomes = torch.tensor([1, 0])
    grid = AnswerGrid().probabilities()
    for name, rl_config in runs:
        try:
            trainer = TabularTrainer(TabularPolicy(2, grid), categories, outcomes, rl_config)
            trainer.train_step()
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"run {name!r} cannot run (method {rl_config.method!r}, group_size "
                f"{rl_config.group_size}, reward {rl_config.reward!r}): {err}"
            ) from err


def run_synthetic_calibration(
    out: str | Path,
    config: SyntheticCalibrationConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Run (or resume) every planned run and write ``out/metrics.csv``.

    Completed runs whose manifest matches are skipped; an interrupted run resumes from
    its checkpoint. A run folder written with different settings is only replaced when
    ``overwrite`` is true. The settings are checked, and every run takes one step on a
    two-question problem, before anything is written or trained.

    Returns
    -------
    pandas.DataFrame
        The rows of ``metrics.csv``.

    Raises
    ------
    ValueError
        Invalid settings (:meth:`SyntheticCalibrationConfig.validate`) or a run that
        cannot take a step (naming the run); nothing is written then.
    """
    config = config or SyntheticCalibrationConfig()
    runs = plan_runs(config)
    _preflight(runs)
    out = Path(out)
    _check_output_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "pipeline.json", json.dumps(config.to_dict(), indent=2))

    questions = _questions(config)
    questions_path = out / "questions.csv"
    if questions_path.exists():
        saved = pd.read_csv(questions_path)
        if not (saved.shape == questions.shape and np.allclose(saved.values, questions.values)):
            if not overwrite:
                raise FileExistsError(
                    f"{questions_path} holds a different question set (other seed or sizes); "
                    "use a new --out or pass --overwrite"
                )
    with atomic_path(questions_path) as tmp:
        questions.to_csv(tmp, index=False)

    categories = torch.as_tensor(questions["category"].to_numpy())
    outcomes = torch.as_tensor(questions["outcome"].to_numpy())
    p_star = questions["p_star"].to_numpy()
    p_category = (
        questions.groupby("category")["p_star"].first().reindex(range(config.n_categories))
    ).to_numpy()
    grid = AnswerGrid().probabilities()

    rows = []
    sweep_start = time.perf_counter()
    for name, rl_config in runs:
        run_dir = out / "runs" / _safe(name)
        manifest_config = {
            "run": rl_config,  # a dataclass: a field added later counts at its default
            "n_questions": config.n_questions,
            "n_categories": config.n_categories,
            "n_eval_samples": config.n_eval_samples,
            "n_bins": config.n_bins,
            "bin_right": config.bin_right,
            "n_boot": config.n_boot,
        }
        result_path = run_dir / "result.json"
        if result_path.exists() and manifest_matches(
            run_dir, config=manifest_config, seed=config.seed
        ):
            print(f"[{name}] up to date, skipped")
            rows.append(json.loads(result_path.read_text()))
            continue
        manifest_path = run_dir / "manifest.json"
        if manifest_path.exists() and not manifest_matches(
            run_dir, config=manifest_config, seed=config.seed
        ):
            if not overwrite:
                raise FileExistsError(
                    f"{run_dir} holds a run with different settings; "
                    "use a new --out or pass --overwrite to replace it"
                )
            for stale in ("checkpoint.pt", "result.json"):
                (run_dir / stale).unlink(missing_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_manifest(run_dir, config=manifest_config, seed=config.seed)
        # the manifest is (re)written first so a checkpoint always belongs to it;
        # result.json is what marks the run complete
        policy = TabularPolicy(config.n_categories, grid)
        trainer = TabularTrainer(policy, categories, outcomes, rl_config)

        def extra_log(policy: TabularPolicy) -> dict[str, float]:
            mean_answer = policy.mean_answer().numpy()
            return {
                "mae_expected_answer": float(np.mean(np.abs(mean_answer - p_category))),
                "overconfidence_expected_answer": float(
                    np.mean(np.abs(mean_answer - 0.5)) - np.mean(np.abs(p_category - 0.5))
                ),
            }

        timing = trainer.train(
            checkpoint_path=run_dir / "checkpoint.pt",
            log_path=run_dir / "log.csv",
            extra_log=extra_log,
            progress=progress,
            description=name,
        )
        row = _evaluate(
            name, trainer, policy, categories, outcomes, p_star, p_category, config, run_dir, out
        )
        row.update(
            {
                "group_size": rl_config.group_size,
                "updates_per_rollout": rl_config.updates_per_rollout,
                "clip_eps": rl_config.clip_eps,
                "steps": rl_config.steps,
                "seconds": timing["seconds"],
                "steps_per_second": timing["steps_per_second"],
            }
        )
        atomic_write_text(result_path, json.dumps(row, indent=2))
        (run_dir / "checkpoint.pt").unlink(missing_ok=True)
        print(
            f"[{name}] ece {row['ece']:.3f}, overconfidence {row['overconfidence']:+.3f}, "
            f"drift theory {row['theory_drift']:+.3f} / observed {row['observed_drift']:+.3f}, "
            f"overconfidence theory {row['theory_overconfidence']:+.3f}, "
            f"{timing['steps_per_second']:.0f} steps/s"
        )
        rows.append(row)
    table = pd.DataFrame(rows)
    with atomic_path(out / "metrics.csv") as tmp:
        table.to_csv(tmp, index=False)
    print(
        f"wrote {out / 'metrics.csv'} ({len(rows)} runs, {time.perf_counter() - sweep_start:.0f} s)"
    )
    return table


def _evaluate(
    name: str,
    trainer: TabularTrainer,
    policy: TabularPolicy,
    categories: torch.Tensor,
    outcomes: torch.Tensor,
    p_star: np.ndarray,
    p_category: np.ndarray,
    config: SyntheticCalibrationConfig,
    run_dir: Path,
    out: Path,
) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(config.seed + 1)
    predictions = policy.predict(categories, config.n_eval_samples, generator).numpy()
    y = outcomes.numpy()
    category_index = categories.numpy()
    # each category's empirical outcome rate: with outcomes fixed per question, the
    # probability an unbiased method converges to
    rate = pd.Series(y).groupby(category_index).mean().reindex(range(len(p_category)))
    empirical = rate.to_numpy()[category_index]
    metrics = summarize(
        y,
        predictions,
        p_star=p_star,
        n_bins=config.n_bins,
        n_boot=config.n_boot,
        seed=config.seed,
        right=config.bin_right,
        references={"empirical": empirical},
    )
    per_category = (
        pd.Series(predictions).groupby(category_index).mean().reindex(range(len(p_category)))
    ).to_numpy()
    method, options = trainer.config.method, trainer.config.advantage_options
    target = theory_target(
        method,
        policy.probs(),
        policy.answers,
        torch.as_tensor(p_category),
        trainer.config.reward,
        options,
    ).numpy()
    fixed_point = theory_fixed_point(
        method,
        torch.as_tensor(p_category),
        policy.answers,
        trainer.config.reward,
        options=options,
    ).numpy()
    outward = np.sign(p_category - 0.5)
    row: dict[str, Any] = {"method": name}
    row.update(metrics)
    # theory at the run's final policy vs what the run did, per category then averaged
    row["theory_drift"] = float(np.mean(outward * (target - p_category)))
    row["observed_drift"] = float(np.mean(outward * (per_category - p_category)))
    predicted_sign = np.sign(target - p_category)
    moving = (predicted_sign != 0) & ~np.isnan(predicted_sign)  # NaN: no theory
    row["drift_sign_agreement"] = (
        float(np.mean(predicted_sign[moving] == np.sign(per_category - p_category)[moving]))
        if moving.any()
        else float("nan")
    )
    row["theory_target_error"] = float(np.mean(np.abs(per_category - target)))
    row["mae_category_to_reference"] = float(np.mean(np.abs(per_category - p_category)))
    row["mae_category_to_empirical"] = float(np.mean(np.abs(per_category - rate.to_numpy())))
    # theory's end point when started calibrated, as overconfidence (comparable to the run's)
    row["theory_overconfidence"] = float(
        np.mean(np.abs(fixed_point - 0.5)) - np.mean(np.abs(p_category - 0.5))
    )
    torch.save(
        {"logits": policy.logits.detach().clone(), "p_category": torch.as_tensor(p_category)},
        run_dir / "policy.pt",
    )
    with atomic_path(run_dir / "predictions.csv") as tmp:
        pd.DataFrame(
            {"question": np.arange(len(y)), "prediction": predictions, "outcome": y}
        ).to_csv(tmp, index=False)
    plot_reference(
        p_category,
        per_category,
        out / f"{_safe(name)}.png",
        title=f"{name}: per-category prediction",
        target=None if np.isnan(target).all() else target,
    )
    plot_reliability_diagram(
        y, predictions, run_dir / "reliability.png", config.n_bins, name, right=config.bin_right
    )
    plot_prediction_histogram(predictions, run_dir / "histogram.png", title=name)
    return row
