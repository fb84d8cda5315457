"""Does the fine-tuned LM answer question by question? Held-out figures per method, beside
a constant answer and a supervised fit of the same model, in one run.

Runs a pipeline config (default ``pipelines/configs/demo.yaml``) through
:func:`bioreason.pipelines.run.run_pipeline` into ``--out`` (a finished, up-to-date
run is not redone: every stage is skipped when its manifest matches) and reads the
calibration stage's ``summary.csv``, whose figures are seed means over the held-out
(test) questions with 95 % bootstrap intervals over seeds and conditions. Then prints,
one ``name: value unit`` line each:

- per method (its folder name, e.g. ``seed_grpo-base-grpo``): ``corr_q_pstar_<method>``
  (Pearson correlation of q with p* across questions; ``nan`` when q is constant),
  ``sd_q_<method>`` (sd of q across questions), ``mae_q_pstar_<method>`` (mean
  |q - p*|), ``overconfidence_question_<method>`` (mean of sign(p* - 1/2)(q - p*),
  positive when answers are pushed outward past p*) with ``_low`` / ``_high``;
- ``mae_q_pstar_constant``: every held-out question answered with the mean training
  outcome rate, and ``mae_q_pstar_best_constant``: with the median held-out p* (the best
  constant answer, known only in hindsight);
- ``mae_q_pstar_additive``, ``corr_q_pstar_additive``, ``sd_q_additive``: the additive
  fit from the train questions' exact p* (``lm_question_fit.additive_reference``:
  condition mean + program mean - overall mean), the ceiling for answers that compose a
  condition with a program; a calibrated predictor with correlation r has sd of q near
  r x sd(p*), so this bounds what the sd and |q - p*| targets can ask;
- ``mae_q_pstar_interaction``, ``corr_q_pstar_interaction``, ``sd_q_interaction``: the
  interaction fit (``lm_question_fit.interaction_reference``: ridge regression of logit
  p* on the condition's parts, the program and each part x program pair), fitted to the
  train questions' exact p*: every feature of the prompt, used linearly;
- the same figures on the *train* questions, ``corr_q_pstar_train_<method>``,
  ``sd_q_train_<method>``, ``mae_q_pstar_train_<method>`` (seed means; each seed's final
  model scored with ``LMTrainer.predict("train")``): how much of the questions RL
  learned, apart from how much of it carries to held-out questions;
- the supervised fits of ``benchmarks/lm_question_fit.py`` (its ``_fit``: the seed-0
  warm start, with what RL trains (``finetune.rl.trainable``), fitted to the train
  questions' exact p*, no RL noise), on the test and the train questions: with the
  expected log score RL maximises, ``..._supervised`` and ``..._train_supervised``; with
  the cross-entropy to the nearest grid answer (what the model can represent),
  ``..._supervised_ce`` and ``..._train_supervised_ce``;
- ``seconds_total``.

    python benchmarks/lm_question_level.py [--config pipelines/configs/demo.yaml]
        [--set finetune.rl.steps=200 ...] [--out runs/demo] [--seeds 3] [--workers 2]
        [--fit-steps 1000] [--fit-lr 5e-4] [--fit-lr-ce 3e-3] [--threads 2] [--refit]

A ``--out`` that holds a run fitted with other data, vae, task or lm settings is refused
(running would refit those stages and replace the fitted model) unless ``--refit``;
give the run's own ``--set`` flags to read it.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

QUESTION_FIT = Path(__file__).with_name("lm_question_fit.py")


def _question_fit():
    """``benchmarks/lm_question_fit.py`` as a module (benchmarks are scripts, not a
    package)."""
    spec = importlib.util.spec_from_file_location("lm_question_fit", QUESTION_FIT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _seeds(values: list[int]) -> list[int]:
    """``N`` (seeds 0..N-1) or a list of seeds."""
    return list(range(values[0])) if len(values) == 1 else values


def _line(name: str, value: float, unit: str = "") -> None:
    if not math.isfinite(value):
        text = "nan"
    elif value != 0 and abs(value) < 1e-3:  # a collapsed policy's sd of q: keep its size
        text = f"{value:.2e}"
    else:
        text = f"{value:.4f}"
    print(f"{name}: {text}{' ' + unit if unit else ''}", flush=True)


def constant_baselines(task: pd.DataFrame) -> dict[str, float]:
    """Mean |q - p*| on the test questions of two constant answers.

    Parameters
    ----------
    task : pandas.DataFrame
        The task table (``split``, ``outcome``, ``p_star``).

    Returns
    -------
    dict
        ``constant``: the mean training outcome rate for every question;
        ``best_constant``: the median test p* (the constant that minimises the mean
        absolute error, chosen in hindsight).
    """
    train = task[task["split"] == "train"]
    test = task[task["split"] == "test"]
    p_star = test["p_star"].to_numpy(dtype=float)
    rate = float(train["outcome"].astype(float).mean())
    return {
        "constant": float(np.mean(np.abs(p_star - rate))),
        "best_constant": float(np.mean(np.abs(p_star - np.median(p_star)))),
    }


def in_sample_figures(
    out: Path, task: pd.DataFrame, config: Any, split: str = "train"
) -> dict[str, dict[str, float]]:
    """Each method's figures on the questions of ``split`` (default the train questions),
    averaged over seeds.

    Every seed's final model (``finetune/<method>_seed<S>/model``) is scored with
    :meth:`bioreason.rl.LMTrainer.predict` on ``split``, under the run's RL settings; the
    figures use ``q_exact``.

    Parameters
    ----------
    out : Path
        The run folder.
    task : pandas.DataFrame
        The run's task table.
    config : bioreason.pipelines.run.PipelineConfig
        The run's configuration (its methods, seeds and RL settings).
    split : str
        Which questions.

    Returns
    -------
    dict
        ``{method: {"corr": ..., "sd_q": ..., "mae": ...}}``; ``corr`` is NaN for a
        seed whose answers are all equal (and then for the mean).
    """
    import torch

    from bioreason.lm import load_predictor
    from bioreason.rl import LMTrainer
    from bioreason.run_layout import MODEL_DIR, job_folder_name

    question_figures = _question_fit().question_figures
    figures: dict[str, dict[str, float]] = {}
    for method in config.finetune.methods:
        per_seed = []
        for seed in config.finetune.seeds:
            predictor = load_predictor(out / "finetune" / job_folder_name(method, seed) / MODEL_DIR)
            rl = dataclasses.replace(
                config.finetune.rl,
                method=method,
                seed=seed,
                eval_split=None,
                tensorboard=False,
                device="cpu",
            )
            with torch.no_grad():
                frame = LMTrainer.from_predictor(predictor, task, rl).predict(split, n_samples=1)
            per_seed.append(question_figures(frame["q_exact"], frame["p_star"]))
        figures[method] = {k: float(np.mean([f[k] for f in per_seed])) for k in per_seed[0]}
    return figures


def _changed_fitted_stages(out: Path, config: Any) -> list[str]:
    """How the settings of the stages before fine-tuning (``data``, ``vae``, ``task``,
    ``lm``) recorded in ``out``'s run record (``pipeline.json``) differ from ``config``:
    one ``"vae.options.n_latent: 10 -> 20"`` line per setting (a setting the record lacks,
    e.g. one added to bioreason since, is no difference at its default and shows as
    ``(absent)`` otherwise); [] when ``out`` holds no run or the same settings."""
    import json

    from bioreason.run_layout import PIPELINE_RECORD
    from bioreason.stage import config_defaults, config_differences

    record = out / PIPELINE_RECORD
    if not record.is_file():
        return []
    recorded = json.loads(record.read_text()).get("config", {})
    wanted = json.loads(json.dumps(config.to_dict(), default=str))
    defaults = config_defaults(config)
    found: list[str] = []
    for stage in ("data", "vae", "task", "lm"):
        if stage in recorded and recorded[stage] != wanted.get(stage):
            found += config_differences(
                {stage: recorded[stage]}, {stage: wanted.get(stage)}, defaults
            )
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("pipelines/configs/demo.yaml"))
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override a config field (as `bioreason run --set`); repeatable",
    )
    parser.add_argument("--out", type=Path, help="run folder (default runs/<name>)")
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="N (seeds 0..N-1) or a list (default: the config's)"
    )
    parser.add_argument("--workers", type=int, default=1, help="parallel fine-tuning jobs")
    parser.add_argument("--fit-steps", type=int, default=1000, help="supervised fit steps")
    parser.add_argument("--fit-lr", type=float, default=5e-4, help="supervised fit rate")
    parser.add_argument(
        "--fit-lr-ce", type=float, default=3e-3, help="rate of the cross-entropy fit"
    )
    parser.add_argument("--fit-batch", type=int, default=32, help="questions per fit step")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the fit")
    parser.add_argument("--no-report", action="store_true", help="skip report.html")
    parser.add_argument(
        "--refit",
        action="store_true",
        help="let a --config that differs from the run in --out refit its data, vae, task "
        "or lm stage (by default that is refused: it would replace the fitted model)",
    )
    args = parser.parse_args(argv)
    if args.fit_steps < 1 or args.fit_batch < 1:
        parser.error("--fit-steps and --fit-batch must be >= 1")
    if args.seeds is not None and (not args.seeds or min(args.seeds) < 0):
        parser.error("--seeds must be N >= 1 or a list of seeds >= 0")

    import torch

    from bioreason.pipelines.run import load_pipeline_config, run_pipeline
    from bioreason.run_layout import SUMMARY_FILE, TASK_FILE, method_slug

    start = time.perf_counter()
    overrides = list(args.set)
    if args.seeds is not None:
        overrides.append(f"finetune.seeds=[{', '.join(map(str, _seeds(args.seeds)))}]")
    config = load_pipeline_config(args.config, overrides)
    if config.kind != "lm":
        parser.error(f"--config {args.config} is a {config.kind!r} pipeline; give an LM one")
    if 0 not in config.finetune.seeds:
        parser.error(
            "the supervised fit starts from seed 0's warm start: include seed 0 in the seeds "
            f"(got {config.finetune.seeds})"
        )
    out = args.out or Path("runs") / config.name
    changed = _changed_fitted_stages(out, config)
    if changed and not args.refit:
        parser.error(
            f"{out} holds a run fitted with other settings than --config {args.config} "
            f"with the --set overrides given ({'; '.join(changed[:5])}"
            f"{'; ...' if len(changed) > 5 else ''}); running it would refit those stages "
            "and replace what they fitted. Give the run's own settings (the --set flags it "
            "was run with), another --out, or --refit."
        )
    results = run_pipeline(config, out, workers=args.workers, report=not args.no_report)
    if "calibration" not in results:
        print(f"lm_question_level: the pipeline in {out} has no calibration stage", file=sys.stderr)
        return 2
    summary = pd.read_csv(results["calibration"].path / SUMMARY_FILE)
    task = pd.read_parquet(results["task"].path / TASK_FILE)

    for _, row in summary.iterrows():
        name = method_slug(str(row["method"]))
        _line(f"corr_q_pstar_{name}", float(row["corr_p_star"]))
        _line(f"sd_q_{name}", float(row["sd_q"]), "probability")
        _line(f"mae_q_pstar_{name}", float(row["mae_p_star"]), "probability")
        for suffix in ("", "_low", "_high"):
            value = float(row[f"overconfidence_question{suffix}"])
            _line(f"overconfidence_question_{name}{suffix}", value, "probability")
    baselines = constant_baselines(task)
    _line("mae_q_pstar_constant", baselines["constant"], "probability")
    _line("mae_q_pstar_best_constant", baselines["best_constant"], "probability")
    question_fit = _question_fit()
    additive = question_fit.additive_reference(task)
    _line("mae_q_pstar_additive", additive["mae"], "probability")
    _line("corr_q_pstar_additive", additive["corr"])
    _line("sd_q_additive", additive["sd_q"], "probability")
    interaction = question_fit.interaction_reference(task)
    _line("mae_q_pstar_interaction", interaction["mae"], "probability")
    _line("corr_q_pstar_interaction", interaction["corr"])
    _line("sd_q_interaction", interaction["sd_q"], "probability")

    torch.set_num_threads(args.threads)
    for method, figures in in_sample_figures(out, task, config).items():
        name = method_slug(method)
        _line(f"corr_q_pstar_train_{name}", figures["corr"])
        _line(f"sd_q_train_{name}", figures["sd_q"], "probability")
        _line(f"mae_q_pstar_train_{name}", figures["mae"], "probability")
    trainable = config.finetune.rl.trainable
    for objective, lr, suffix in (("score", args.fit_lr, ""), ("ce", args.fit_lr_ce, "_ce")):
        fit = question_fit._fit(
            out, lr, args.fit_steps, "p_star", args.fit_batch, 0, trainable, objective
        )
        for split in ("", "train_"):
            _line(f"mae_q_pstar_{split}supervised{suffix}", fit[split + "mae"], "probability")
            _line(f"corr_q_pstar_{split}supervised{suffix}", fit[split + "corr"])
            _line(f"sd_q_{split}supervised{suffix}", fit[split + "sd_q"], "probability")
    _line("seconds_total", time.perf_counter() - start, "s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
