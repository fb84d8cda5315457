"""The run report: a synthetic run folder in the pipeline's layout -> report.html / .md."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bioreason.report import ReportFiles, write_report
from bioreason.report.build import format_interval

METHODS = ("grpo", "rloo", "seed_grpo:base=grpo")
SEEDS = (0, 1)
FINDING = "Not shown by this run: GRPO's ECE interval overlaps rloo's ECE 0.081 <&> test."
INTERVAL = "95 % bootstrap over seeds and conditions"
COMMANDS = ["bioreason run pipelines/configs/tiny.yaml --workers 2", "bioreason report runs/tiny"]


def _slug(method: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "-", method).strip("-")


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def make_run(root: Path, n_questions: int = 40) -> Path:
    """A small but complete run folder (3 methods x 2 seeds, ``n_questions`` questions).

    Returns
    -------
    Path
        ``root / "tiny"``.
    """
    rng = np.random.default_rng(0)
    run = root / "tiny"
    stages = ("data", "vae", "task", "warm_start", "finetune", "calibration")
    _write_json(
        run / "pipeline.json",
        {
            "name": "tiny",
            "config": {"data": {"n_genes": 50, "source": "simulated"}, "finetune": {"steps": 40}},
            "commands": COMMANDS,
            "versions": {"bioreason": "0.1.0", "torch": "2.13.0", "python": "3.11.9"},
            "stages": {s: {"status": "done", "seconds": 1.5 + i} for i, s in enumerate(stages)},
            "started": "2026-12-03T10:00:00+00:00",
            "finished": "2026-12-03T10:05:00+00:00",
        },
    )
    _write_json(
        run / "data" / "result.json",
        {
            "n_cells": 1200,
            "n_genes": 50,
            "n_conditions": 16,
            "n_perturbations": 8,
            "n_combinations": 7,
            "source": "simulated",
            "heldout_conditions": ["P01+P02", "P03+P05"],
        },
    )
    steps = np.arange(0, 200, 10)
    _write_json(
        run / "vae" / "result.json",
        {
            "model": "sams_vae",
            "steps": 200,
            "train_seconds": 12.5,
            "iwelbo_heldout": -812.3,
            "iwelbo_train": -790.1,
            "ate_pearson_seen": 0.91,
            "ate_pearson_heldout": 0.74,
            "mask_auroc": 0.88,
            "ppc": {"mean_ks": 0.04, "zero_fraction_error": 0.01},
            "loss_curve": [[int(s), float(2000 * np.exp(-s / 60) + 800)] for s in steps],
        },
    )
    split = np.array(["train", "val", "test", "test"] * (n_questions // 4))
    p_true = rng.uniform(0.02, 0.98, n_questions)
    p_star = np.clip(p_true + rng.normal(0, 0.05, n_questions), 0.01, 0.99)
    task = pd.DataFrame(
        {
            "question_id": [f"q{i:05d}" for i in range(n_questions)],
            "condition": [f"P{i % 8:02d}" for i in range(n_questions)],
            "readout": [f"program{i % 5}" for i in range(n_questions)],
            "prompt": ["Does <P> raise program?"] * n_questions,
            "p_star": p_star,
            "p_star_se": np.full(n_questions, 0.01),
            "p_star_spread": rng.uniform(0.0, 0.1, n_questions),
            "p_true": p_true,
            "outcome": (rng.uniform(size=n_questions) < p_true).astype(np.int8),
            "split": split,
        }
    )
    (run / "task").mkdir(parents=True)
    task.to_parquet(run / "task" / "task.parquet", index=False)
    _write_json(
        run / "task" / "result.json",
        {
            "n_questions": n_questions,
            "n_train": int((split == "train").sum()),
            "n_test": int((split == "test").sum()),
            "outcome_rate": 0.5,
            "mae_p_star_p_true": 0.04,
            "corr_p_star_p_true": 0.98,
            "mean_spread": 0.05,
            "simulator_seconds": 3.2,
            # the task table's own summary repeats some top-level figures
            "summary": {"n_questions": n_questions, "outcome_rate": 0.5, "p_star_se": 0.01},
        },
    )
    _write_json(
        run / "warm_start" / "result.json",
        {
            "steps": 30,
            "seconds": 4.0,
            "invalid_rate_after": 0.0,
            "prompt_spread": {"0": {"before": 0.2731, "after": 0.2724}},
        },
    )
    test = task[task["split"] == "test"]
    predictions = []
    log_columns = (
        "reward_mean,reward_std,zero_std_fraction,invalid_rate,completion_length,entropy,kl,"
        "kl_behaviour,clip_fraction,value_loss,grad_norm,step_time"
    ).split(",")
    for method in METHODS:
        push = 0.3 if method == "grpo" else 0.0
        for seed in SEEDS:
            folder = run / "finetune" / f"{_slug(method)}_seed{seed}"
            folder.mkdir(parents=True)
            log = pd.DataFrame(rng.normal(size=(8, len(log_columns))), columns=log_columns)
            log.insert(0, "step", np.arange(0, 40, 5))
            log.iloc[0, 1:] = np.nan
            log.to_csv(folder / "log.csv", index=False)
            pd.DataFrame(
                {
                    "step": [0, 40],
                    "n_questions": len(test),
                    "q_source": "exact",
                    # seed_grpo:base=grpo ends without valid answers (a note in the report)
                    "invalid_rate": [0.2, 1.0 if method == "seed_grpo:base=grpo" else 0.0],
                    "ece": [0.15, 0.05 + push],
                    "brier": [0.25, 0.2],
                    "log_loss": [0.69, 0.6],
                    "mae_to_reference": [0.3, 0.1 + push],
                    "overconfidence": [-0.2, push],
                    "grpo_predicted_outward": [0.01, 0.02],
                    "method_predicted_outward": [0.0, 0.02 if push else 0.0],
                    "measured_outward": [-0.3, push],
                    "prompt_spread": [0.2724, 0.4567],
                }
            ).to_csv(folder / "eval.csv", index=False)
            q = np.clip(test["p_star"] + np.sign(test["p_star"] - 0.5) * push, 0.01, 0.99)
            q = np.clip(q + rng.normal(0, 0.03, len(test)), 0, 1)
            p = test["p_star"].to_numpy()
            fixed = np.where(p > 0.5, 0.99, 0.01) if method != "rloo" else p
            predictions.append(
                pd.DataFrame(
                    {
                        "question_id": test["question_id"].to_numpy(),
                        "condition": test["condition"].to_numpy(),
                        "fixed_point": fixed,
                        "fixed_point_pooled": 0.99 if method != "rloo" else p.mean(),
                        "method": method,
                        "seed": seed,
                        "step": 40,
                        "q_sampled": np.round(q, 1),
                        "q_exact": q,
                        "p_star": test["p_star"].to_numpy(),
                        "p_true": test["p_true"].to_numpy(),
                        "outcome": test["outcome"].to_numpy(float),
                    }
                )
            )
    (run / "calibration").mkdir()
    pd.concat(predictions).to_parquet(run / "calibration" / "predictions.parquet", index=False)
    metrics = (
        "ece",
        "adaptive_ece",
        "brier",
        "log_loss",
        "mae_p_star",
        "mae_p_true",
        "overconfidence",
        "overconfidence_p_true",
        "overconfidence_question",
        "corr_p_star",
        "spearman_p_star",
        "sd_q",
        "auroc",
        "auroc_p_star",
        "mae_fixed_point",
        "corr_fixed_point",
        "overconfidence_fixed_point",
    )
    rows = []
    for k, method in enumerate(METHODS):
        row = {
            "method": method,
            "n_seeds": len(SEEDS),
            "n_test": len(test),
            "n_conditions": 8,
            "interval": INTERVAL,
            "q_source": "exact",
            "invalid_rate": 0.25,
            "mean_q": 0.6,
            "fixed_point_pooled": 0.99,
        }
        for j, metric in enumerate(metrics):
            value = 0.05 + 0.1 * k + 0.01 * j
            row |= {
                metric: value,
                f"{metric}_low": value - 0.03,
                f"{metric}_high": value + 0.04,
                f"{metric}_seed_sd": 0.01,
            }
        row |= {"drift_grpo_predicted": 0.02, "drift_method_predicted": 0.0, "drift_measured": -0.1}
        rows.append(row)
    summary = pd.DataFrame(rows)
    summary.to_csv(run / "calibration" / "summary.csv", index=False)
    _write_json(
        run / "calibration" / "result.json",
        {
            "headline": [
                {
                    k: r[k]
                    for k in (
                        "method",
                        "q_source",
                        "invalid_rate",
                        "ece",
                        "ece_low",
                        "ece_high",
                        "mae_p_star",
                        "overconfidence_question",
                        "overconfidence_question_low",
                        "overconfidence_question_high",
                        "corr_p_star",
                        "sd_q",
                    )
                }
                for r in rows
            ],
            "interval": INTERVAL,
            "finding": {"shown": False, "text": FINDING},
        },
    )
    return run


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return make_run(tmp_path)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, ReportFiles, str]:
    """The report of a complete run, written once for the tests that only read it."""
    run_dir = make_run(tmp_path_factory.mktemp("report"))
    files = write_report(run_dir)
    return run_dir, files, files.html.read_text()


def _bare_run(root: Path) -> Path:
    run = root / "bare"
    _write_json(run / "pipeline.json", {"name": "bare", "stages": {}})
    return run


def _section(html_text: str, anchor: str) -> str:
    start = html_text.index(f'id="{anchor}"')
    end = html_text.find("<h2", start)
    return html_text[start : end if end != -1 else None]


def test_writes_both_files_and_figures(report):
    run_dir, files, html_text = report
    assert files.html == run_dir / "report.html" and files.markdown == run_dir / "report.md"
    # loss curve, simulator check, training, evaluation, reliability question by
    # question, fixed points, reliability against outcomes, scatter, histograms
    assert files.n_figures == 9
    assert len(re.findall(r"<img\b", html_text)) == files.n_figures
    markdown = files.markdown.read_text()
    linked = re.findall(r"!\[[^\]]*\]\((report_files/[^)]+\.png)\)", markdown)
    assert len(linked) == files.n_figures
    for relative in linked:
        png = run_dir / relative
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # small figures: the page stays light
    assert len(html_text) < 3_000_000


def test_html_is_self_contained(report):
    _, _, html_text = report
    for tag in re.findall(r"<(?:script|link|img|iframe|source|video|audio)\b[^>]*>", html_text):
        for url in re.findall(r'\b(?:src|href)="([^"]*)"', tag):
            assert url.startswith("data:"), tag[:120]
    assert "<link" not in html_text
    assert "http://" not in html_text and "https://" not in html_text
    assert 'src="//' not in html_text and "url(" not in html_text
    assert "@import" not in html_text


def test_content(report):
    _, files, html_text = report
    table = _section(html_text, "calibration")
    for method in METHODS:
        assert f"<td>{method}</td>" in table
    assert format_interval(0.05, 0.02, 0.09) in table  # grpo's ECE with its interval
    assert "0.050 [0.020, 0.090]" in table
    # the finding, escaped, in a warning box before the first section
    assert html.escape(FINDING) in html_text
    assert html_text.index('class="box warning"') < html_text.index('id="stages"')
    assert "<&>" not in html_text
    for command in COMMANDS:
        assert command in html_text
        assert command in files.markdown.read_text()
    assert "2.13.0" in html_text
    assert ": not run" not in html_text  # every stage folder is there
    for expected in ("P01+P02", "sams_vae", "0.880", "mean_ks"):
        assert expected in html_text
    finetune = _section(html_text, "finetune")  # one note per silent run, no other
    assert finetune.count("stopped answering validly") == len(SEEDS)
    # the prompt spread at the answer position: every run's last one, and the warm start's
    assert "<th>prompt spread</th>" in finetune and finetune.count(">0.457</td>") >= len(METHODS)
    assert "0.273" in html_text and "0.272" in html_text
    assert "score a forced &lt;answer&gt;" in finetune
    simulator = _section(html_text, "task")  # summary rows only where they add something
    assert "<td>outcome_rate</td>" in simulator and "summary.outcome_rate" not in simulator
    assert "summary.n_questions" not in simulator and "summary.p_star_se" in simulator
    # the methods of the drift table and the markdown calibration table
    markdown = files.markdown.read_text()
    assert markdown.splitlines()[0].startswith("<!--")
    assert "| seed_grpo:base=grpo |" in markdown
    assert "GRPO predicted, final policy" in markdown
    # the question-level figures and what the intervals cover, in the headline and the
    # calibration section; the sampled invalid rate beside them
    head = html_text[: html_text.index('id="stages"')]
    for text in ("corr(q, p*)", "sd of q", "overconfidence vs p*", "invalid answers, sampled"):
        assert text in head and text in table
    assert INTERVAL in head and INTERVAL in table
    assert "q_exact scored" in head
    assert "Theory against measurement: fixed points" in table
    assert "mean |q - fixed point|" in table
    assert "Reliability question by question" in table and "Theory against measurement" in table
    assert "data-images-loaded" not in html_text.split("<script>")[0]


def test_partial_run_reports_not_run(run_dir):
    shutil.rmtree(run_dir / "finetune")
    shutil.rmtree(run_dir / "calibration")
    task = pd.read_parquet(run_dir / "task" / "task.parquet")
    task["p_true"] = np.nan  # as on real data
    task.to_parquet(run_dir / "task" / "task.parquet")
    (run_dir / "warm_start").rename(run_dir / "warm")  # the folder's other name
    pipeline = json.loads((run_dir / "pipeline.json").read_text())
    pipeline["stages"]["finetune"] = {"status": "failed", "seconds": 0.2}
    pipeline["stages"]["calibration"] = {"status": "not run", "seconds": 0.0}
    pipeline["finished"] = None
    (run_dir / "pipeline.json").write_text(json.dumps(pipeline))
    files = write_report(run_dir)
    html_text = files.html.read_text()
    assert "stage finetune: not run (pipeline.json: failed)" in html_text
    assert "stage calibration: not run" in html_text
    assert "Finding not available" in html_text
    assert "No p_true (real data)" in html_text
    assert "stage warm_start: not run" not in html_text and "invalid_rate_after" in html_text
    assert files.n_figures == 2  # loss curve and simulator check
    assert len(re.findall(r"<img\b", html_text)) == 2
    assert "stage calibration: not run" in files.markdown.read_text()


def test_only_pipeline_json_and_damaged_files(tmp_path):
    run = _bare_run(tmp_path)
    (run / "vae").mkdir()
    (run / "vae" / "result.json").write_text("{not json")
    files = write_report(run)
    html_text = files.html.read_text()
    for stage in ("data", "task", "warm_start", "finetune", "calibration"):
        assert f"stage {stage}: not run" in html_text
    assert "vae/result.json: JSONDecodeError" in html_text
    assert files.n_figures == 0


def test_overwrite_rules(tmp_path):
    run_dir = _bare_run(tmp_path)  # the rules do not depend on the content
    first = write_report(run_dir)
    second = write_report(run_dir)  # its own report is replaced without force
    assert second.n_figures == first.n_figures
    first.html.write_text("<html><body>my notes</body></html>")
    with pytest.raises(FileExistsError, match=r"report\.html.*--force"):
        write_report(run_dir)
    assert first.html.read_text() == "<html><body>my notes</body></html>"
    write_report(run_dir, force=True)
    assert "bioreason write_report" in first.html.read_text()
    first.markdown.write_text("# my notes\n")
    with pytest.raises(FileExistsError, match=r"report\.md.*--force"):
        write_report(run_dir)
    assert first.markdown.read_text() == "# my notes\n"
    write_report(run_dir, force=True)


def test_stale_figures_removed(run_dir):
    shutil.rmtree(run_dir / "finetune")
    write_report(run_dir)
    assert len(list((run_dir / "report_files").glob("*.png"))) == 7
    shutil.rmtree(run_dir / "calibration")
    files = write_report(run_dir)
    assert len(list((run_dir / "report_files").glob("*.png"))) == files.n_figures == 2


def test_missing_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"pipeline\.json"):
        write_report(tmp_path / "empty")
    assert not (tmp_path / "empty" / "report.html").exists()


def test_a_figure_the_user_edited_or_wrote_is_not_replaced_without_force(run_dir, capsys):
    """issue 20: the report protects every file it writes, report_files/figure-*.png too."""
    from bioreason.cli import main

    files = write_report(run_dir)
    figure = run_dir / "report_files" / "figure-01.png"
    edited = figure.read_bytes() + b"my annotation"
    figure.write_bytes(edited)
    with pytest.raises(FileExistsError, match=r"figure-01\.png has changed.*--force"):
        write_report(run_dir)
    assert main(["report", str(run_dir)]) == 1
    assert "figure-01.png" in capsys.readouterr().err
    assert figure.read_bytes() == edited
    write_report(run_dir, force=True)
    assert figure.read_bytes() != edited
    # a figure of the user's that no report wrote (a later, longer report would replace it)
    mine = run_dir / "report_files" / f"figure-{files.n_figures + 1:02d}.png"
    mine.write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="not written by bioreason"):
        write_report(run_dir)
    assert mine.read_bytes() == b"mine"
    mine.unlink()
    assert write_report(run_dir).n_figures == files.n_figures  # its own: replaced freely


def test_a_malformed_summary_is_named_and_the_command_fails(run_dir, capsys):
    """issue 20: a present but malformed calibration/summary.csv is not called missing."""
    from bioreason.cli import main

    (run_dir / "calibration" / "summary.csv").write_text('garbage,,\n"\n')
    files = write_report(run_dir)
    assert any("calibration/summary.csv" in problem for problem in files.problems)
    html_text = files.html.read_text()
    assert "calibration/summary.csv is missing" not in html_text
    assert "summary.csv is malformed or unreadable" in html_text
    assert main(["report", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert "calibration/summary.csv" in err and "malformed" in err


def test_the_title_names_the_run_folder_when_the_config_name_differs(run_dir):
    renamed = run_dir.parent / "my_second_try"
    run_dir.rename(renamed)
    title = re.search(r"<h1[^>]*>(.*?)</h1>", write_report(renamed).html.read_text()).group(1)
    assert "my_second_try" in title and "tiny" in title
    assert title.index("my_second_try") < title.index("tiny")


def test_a_synthetic_calibration_folder_gets_its_report(tmp_path, capsys):
    """issue 20: `bioreason report` on a finished synthetic-calibration folder rendered an
    empty report ("records no stages") with rc 0."""
    from bioreason.cli import main

    out = tmp_path / "sc"
    argv = ["synthetic-calibration", "--out", str(out), "--n-questions", "12"]
    argv += ["--n-categories", "3", "--methods", "grpo", "rloo", "--rl-steps", "10"]
    assert main([*argv, "--n-boot", "5", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    html_text = (out / "report.html").read_text()
    assert "records no stages" not in html_text
    assert "Synthetic calibration (tabular policy)" in html_text
    for method in ("grpo", "rloo"):
        assert f"<td>{method}</td>" in html_text
    assert len(re.findall(r"<img\b", html_text)) >= 2  # each run's figure
    (out / "metrics.csv").write_text("nothing useful\n1\n")
    assert main(["report", str(out)]) == 1
    assert "metrics.csv" in capsys.readouterr().err


def test_the_simulator_check_judges_p_star_against_its_targets(run_dir):
    """The fixture's p* is p_true plus noise of sd 0.05 (no bias): the box says p* tracks
    p_true. Shrunk toward 0 (p* = 0.6 p_true, a model whose effects are too small), it
    names the missed targets with the measured bias and what to change."""
    html_text = write_report(run_dir).html.read_text()
    section = _section(html_text, "task")
    assert "p* tracks p_true" in section
    assert "central 90 % interval" not in section  # the fixture's table has no interval
    task_path = run_dir / "task" / "task.parquet"
    task = pd.read_parquet(task_path)
    # an interval of +-0.1 around p* holds p_true (p* = p_true + N(0, 0.05)) for most
    # questions, one that misses every p_true by construction for none
    original = task.copy()
    task["p_star_low"] = task["p_star"] - 0.1
    task["p_star_high"] = task["p_star"] + 0.1
    task.to_parquet(task_path, index=False)
    section = _section(write_report(run_dir, force=True).html.read_text(), "task")
    inside = (
        (task["p_star_low"] <= task["p_true"]) & (task["p_true"] <= task["p_star_high"])
    ).mean()
    assert f"central 90 % interval for {inside:.0%} of" in section
    task["p_star_low"] = task["p_true"] + 0.01
    task["p_star_high"] = task["p_true"] + 0.02
    task.to_parquet(task_path, index=False)
    section = _section(write_report(run_dir, force=True).html.read_text(), "task")
    assert "central 90 % interval for 0% of" in section
    task = original
    task["p_star"] = 0.6 * task["p_true"]
    task.to_parquet(task_path, index=False)
    section = _section(write_report(run_dir, force=True).html.read_text(), "task")
    bias = 0.6 * task["p_true"].mean() - task["p_true"].mean()
    assert "p* misses its targets" in section
    assert f"bias {bias:+.3f}" in section
    assert "basal_guide: residual" in section and "learn_mask_prior: true" in section
    assert "p* is one fit" in section and "vae.fits: 3" in section  # no n_fits: one fit
    result_path = run_dir / "task" / "result.json"
    result = json.loads(result_path.read_text())
    result_path.write_text(json.dumps({**result, "n_fits": 3}))
    section = _section(write_report(run_dir, force=True).html.read_text(), "task")
    assert "p* pools 3 fits of the model (vae.fits)" in section and "is one fit" not in section


@pytest.mark.parametrize(
    "verdict,title",
    [
        ({"shown": False}, "Finding not shown by this run"),
        (
            {"shown": True, "criterion": "per_question"},
            "Finding shown: GRPO overconfident question by question, the others not",
        ),
        (
            {"shown": True, "criterion": "per_answer"},
            "Finding shown against the answers: GRPO's answers more extreme than the p* "
            "behind them, the others' not",
        ),
    ],
)
def test_the_verdict_box_names_the_criterion_that_showed_the_finding(run_dir, verdict, title):
    path = run_dir / "calibration" / "result.json"
    result = json.loads(path.read_text())
    result["finding"] = {**verdict, "text": "the verdict's text"}
    path.write_text(json.dumps(result))
    html_text = write_report(run_dir, force=True).html.read_text()
    assert html.escape(title) in html_text
    assert html.escape("the verdict's text") in html_text


def test_the_cells_check_names_coverage_fits_and_a_baseline_that_cannot_answer(run_dir):
    """Real data: the box gives p_obs's coverage by p*'s 90 % interval, says whether p* is
    one fit's, and without an additive baseline (every held-out pair has a part never
    measured alone) says so instead of comparing."""
    from html import unescape

    result_path = run_dir / "task" / "result.json"
    result = json.loads(result_path.read_text())
    check = {
        "heldout_conditions": ["A+B", "C+D"],
        "n_questions": 20,
        "mae_p_star_p_obs": 0.17,
        "corr_p_star_p_obs": 0.61,
        "mae_additive_p_obs": 0.21,
        "p_obs_own_error": 0.15,
        "p_obs_in_90pct_interval": 0.85,
    }
    result_path.write_text(json.dumps({**result, "check_on_cells": check}))
    section = unescape(_section(write_report(run_dir, force=True).html.read_text(), "task"))
    assert "mean |p* - p_obs| is 0.170 (correlation 0.61), the additive baseline's 0.210" in section
    assert "p* is at least as close as the additive baseline" in section
    assert "p_obs lies inside p*'s central 90 % interval for 85% of these" in section
    assert "p* is one fit's" in section
    check["mae_additive_p_obs"] = None
    result_path.write_text(json.dumps({**result, "n_fits": 3, "check_on_cells": check}))
    section = unescape(_section(write_report(run_dir, force=True).html.read_text(), "task"))
    assert "the additive baseline answers none of them" in section
    assert "at least as close" not in section and "additive baseline is closer" not in section
    assert "p* pools 3 fits of the model" in section
