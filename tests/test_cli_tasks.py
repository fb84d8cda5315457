"""``bioreason build-task`` and ``bioreason inspect-task``: a task table from a saved model
(by flags and by config file), its summary, and the errors that name what is wrong."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from bioreason.cli import main
from bioreason.cli.build_task import TASK_SPLITS
from bioreason.data.tasks import SPLITS, TASK_COLUMNS, load_replogle_task, save_task
from bioreason.sim.task_config import CONDITION_SETS, TaskConfig

from helpers import require_replogle_task

# small and quick: few conditions, a loose Monte Carlo target
FAST = ["--target-se", "0.05", "--max-draws", "32", "--option", "n_cells=30"]
GENES = ["gene00000", "gene00001"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, one_thread):
    """A tiny screen (4 singles, 2 measured pairs) and a SAMS-VAE trained 20 steps."""
    from bioreason.data import simulate_screen
    from bioreason.models import SAMSVAE

    folder = tmp_path_factory.mktemp("saved")
    adata = simulate_screen(
        n_cells_per_condition=20,
        n_genes=30,
        n_latent=3,
        n_perturbations=4,
        n_combinations=2,
        seed=0,
    )
    SAMSVAE.setup_anndata(adata)
    model = SAMSVAE(adata, n_latent=3, seed=0)
    model.train(max_steps=20, batch_size=256, n_particles=1, progress=False)
    model.save(folder / "model")
    adata.write_h5ad(folder / "screen.h5ad")
    return {"model": folder / "model", "adata": folder / "screen.h5ad", "screen": adata}


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _error(err: str, *names: str) -> None:
    """stderr is one line 'error: ...' that names every one of ``names``."""
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for name in names:
        assert str(name) in lines[0], (name, err)


@pytest.fixture(scope="module")
def flag_task(saved, tmp_path_factory):
    out = tmp_path_factory.mktemp("flags") / "task.parquet"
    argv = [
        "build-task",
        "--model",
        saved["model"],
        "--adata",
        saved["adata"],
        "--readouts",
        *GENES,
        "--conditions",
        "measured",
        "unseen_pairs",
        "--option",
        "threshold=null",
        "--split",
        "heldout_combinations",
        "--ground-truth",
        "--out",
        out,
        *FAST,
    ]
    assert main([str(a) for a in argv]) == 0
    return out


def test_build_task_by_flags_writes_the_table_its_summary_and_a_manifest(flag_task, saved):
    table = pd.read_parquet(flag_task)
    assert all(c in table.columns for c in TASK_COLUMNS)
    # 4 singles + 2 measured pairs + the 4 pairs of measured singles without cells
    conditions = set(table["condition"])
    assert len(conditions) == 10 and set(table["readout"]) == set(GENES)
    assert len(table) == 20 and table["p_star"].between(0, 1).all()
    assert np.isfinite(table["p_true"]).all()  # --ground-truth
    measured = set(saved["screen"].obs["perturbation"].astype(str)) - {"control"}
    held_out = set(table.loc[table["split"] == "test", "condition"])
    assert held_out and all("+" in c for c in held_out)
    definition = json.loads(table["outcome_definition"].iloc[0])
    assert definition["n_cells"] == 30 and isinstance(definition["threshold"], dict)
    summary = json.loads(flag_task.with_suffix(".parquet.summary.json").read_text())
    assert summary["target_se"] == 0.05 and summary["n_questions"] == 20
    manifest = json.loads(flag_task.with_suffix(".parquet.manifest.json").read_text())
    assert manifest["config"]["conditions"] == ["measured", "unseen_pairs"]
    assert set(manifest["inputs"]) == {"model", "adata"}
    assert manifest["outputs"]["task.parquet"] is not None
    assert measured <= conditions


def test_inspect_task_prints_splits_p_star_outcome_rate_se_and_columns(flag_task, capsys):
    code, out, err = _run(capsys, "inspect-task", flag_task)
    assert code == 0, err
    assert "20 questions, 10 conditions, 2 readouts" in out
    assert "questions per split: train" in out and "test" in out
    assert "outcome rate:" in out and "p*: mean" in out and "mean SE" in out
    assert "unconverged (SE > 0.05)" in out  # the target the task was built with
    assert "p* histogram:" in out and "0.9-1.0 |" in out
    assert "p_true: mean" in out and "mean |p* - p_true|" in out
    assert "outcome: screen_hit" in out and "threshold per readout (2 values" in out
    assert "columns: question_id, condition" in out
    code, out, _ = _run(capsys, "inspect-task", flag_task, "--json", "--target-se", "0.001")
    facts = json.loads(out)
    assert facts["n_questions"] == 20 and sum(facts["questions_per_split"].values()) == 20
    assert facts["target_se"] == 0.001 and facts["n_unconverged"] == 20
    assert len(facts["p_star_histogram"]) == 10


def test_build_task_refuses_to_replace_its_out_without_force(flag_task, saved, capsys):
    before = flag_task.read_bytes()
    argv = ["build-task", "--model", saved["model"], "--readouts", *GENES, "--out", flag_task]
    code, _, err = _run(capsys, *argv)
    assert code == 1
    _error(err, flag_task, "already exists", "--force")
    assert flag_task.read_bytes() == before


@pytest.mark.parametrize("which", ["summary", "manifest"])
def test_build_task_refuses_to_replace_the_users_files_beside_out(saved, tmp_path, capsys, which):
    """issue 20: t.parquet.summary.json / t.parquet.manifest.json of the user's are not
    replaced without --force (checked before any work); bioreason's own are."""
    out = tmp_path / "t.parquet"
    mine = tmp_path / f"t.parquet.{which}.json"
    mine.write_text('{"mine": true}')
    argv = ["build-task", "--model", saved["model"], "--readouts", *GENES, "--out", out, *FAST]
    code, _, err = _run(capsys, *argv)
    assert code == 1
    _error(err, mine, "--force")
    assert mine.read_text() == '{"mine": true}' and not out.exists()
    assert _run(capsys, *argv, "--force")[0] == 0
    assert "mine" not in mine.read_text()
    out.unlink()  # bioreason's own files beside it are replaced without --force
    assert _run(capsys, *argv)[0] == 0


def test_build_task_from_a_config_with_flags_on_top(saved, tmp_path, capsys):
    programs = tmp_path / "programs.yaml"
    programs.write_text(yaml.safe_dump({"first": GENES, "second": ["gene00002", "gene00003"]}))
    config = tmp_path / "task.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": str(saved["model"]),
                "adata": str(saved["adata"]),
                "outcome": "screen_hit",
                "outcome_options": {"threshold": 0.05, "n_cells": 30},
                "programs": str(programs),
                "conditions": ["measured_singles", "P0+P1"],
                "n_outcomes": 1,
                "seed": 3,
                "budget": {"target_se": 0.05, "max_draws": 32},
            }
        )
    )
    out = tmp_path / "task.parquet"
    code, stdout, err = _run(
        capsys,
        *["build-task", "--config", config, "--n-outcomes", "2", "--option", "threshold=0.1"],
        *["--outcome-sampling", "shared"],
        *["--out", out, "--force"],  # --force on a new file is harmless
    )
    assert code == 0, err
    assert "wrote" in stdout and "5 conditions x 2 readouts" in stdout
    table = pd.read_parquet(out)
    assert set(table["readout"]) == {"first", "second"}  # readouts default to the programs
    assert set(table["condition"]) == {"P0", "P1", "P2", "P3", "P0+P1"}
    assert table["further_outcomes"].map(len).eq(1).all()  # --n-outcomes 2 overrides
    definition = json.loads(table["outcome_definition"].iloc[0])
    assert definition["threshold"] == 0.1 and definition["n_cells"] == 30  # options merged
    assert table["prompt"].str.contains("second").any()
    manifest = json.loads((tmp_path / "task.parquet.manifest.json").read_text())
    assert manifest["config"]["seed"] == 3 and "programs" in manifest["inputs"]
    # --outcome-sampling shared: one simulated screen per outcome column, recorded
    assert manifest["config"]["outcome_sampling"] == "shared"
    summary = json.loads((tmp_path / "task.parquet.summary.json").read_text())
    assert summary["outcome_sampling"] == "shared"


@pytest.mark.parametrize("nested", [True, False], ids=["budget", "old_flat_keys"])
def test_budget_flags_override_the_config_files_budget(saved, tmp_path, capsys, nested):
    budget = {"target_se": 0.5, "max_draws": 2000}
    config = tmp_path / "task.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": str(saved["model"]),
                "readouts": GENES[:1],
                "conditions": ["P0", "P1"],
                "outcome_options": {"threshold": 0.1, "n_cells": 30},
                **({"budget": budget} if nested else budget),
            }
        )
    )
    out = tmp_path / "task.parquet"
    argv = ["build-task", "--config", config, "--out", out, "--max-draws", "6"]
    argv += ["--min-draws", "6", "--draws-per-round", "3", "--method", "brute"]
    if nested:
        code, _, err = _run(capsys, *argv)
    else:  # the file's old flat target_se still loads; its max_draws gives way to the flag
        with pytest.warns(FutureWarning, match="'target_se' has moved to 'budget.target_se'"):
            code, _, err = _run(capsys, *argv)
    assert code == 0, err
    table = pd.read_parquet(out)
    assert (table["p_star_draws"] == 6).all() and (table["p_star_method"] == "brute").all()
    summary = json.loads(out.with_suffix(".parquet.summary.json").read_text())
    assert summary["target_se"] == 0.5
    with pytest.raises(SystemExit) as exit_info:
        _run(capsys, *argv[:3], "--out", tmp_path / "t.parquet", "--method", "exact")
    assert exit_info.value.code == 2
    _error(capsys.readouterr().err, "--method", "exact")


def test_an_unknown_config_key_is_named_with_the_file(saved, tmp_path, capsys):
    config = tmp_path / "task.yaml"
    config.write_text(f"model: {saved['model']}\nreadout: [gene00000]\n")
    code, _, err = _run(capsys, "build-task", "--config", config, "--out", tmp_path / "t.parquet")
    assert code == 1
    _error(err, "unknown field(s) ['readout']", str(config), "readouts")
    assert not (tmp_path / "t.parquet").exists()


def test_unknown_gene_condition_option_and_set_are_named(saved, tmp_path, capsys):
    base = ["build-task", "--model", saved["model"], "--out", tmp_path / "t.parquet"]
    code, _, err = _run(capsys, *base, "--readouts", "gene00000", "NOTAGENE")
    assert code == 1
    _error(err, "NOTAGENE", "30 genes")
    code, _, err = _run(capsys, *base, "--readouts", "gene00000", "--conditions", "P0", "P9")
    assert code == 1
    _error(err, "P9")
    code, _, err = _run(capsys, *base, "--readouts", "gene00000", "--option", "treshold=0.1")
    assert code == 1
    _error(err, "treshold", "threshold")
    code, _, err = _run(capsys, *base, "--readouts", "gene00000", "--conditions", "measured")
    assert code == 1
    _error(err, "measured", "--adata")
    code, _, err = _run(capsys, *base, "--outcome", "screen_hitt")
    assert code == 1
    _error(err, "screen_hitt", "screen_hit")
    code, _, err = _run(capsys, *base, "--option", "threshold")
    assert code == 2
    _error(err, "KEY=VALUE")
    code, _, err = _run(capsys, *base[:-2], "--out", tmp_path / "t.csv")
    assert code == 2
    _error(err, ".parquet")
    code, _, err = _run(capsys, *base, "--n-programs", "2")
    assert code == 1
    _error(err, "n_programs", "adata")
    assert not (tmp_path / "t.parquet").exists()


def test_inspect_task_errors_name_the_file(tmp_path, saved, capsys):
    missing = tmp_path / "missing.parquet"
    code, _, err = _run(capsys, "inspect-task", missing)
    assert code == 1
    _error(err, missing, "does not exist")
    code, _, err = _run(capsys, "inspect-task", saved["adata"])
    assert code == 1
    _error(err, saved["adata"], "not a parquet file")
    other = tmp_path / "other.parquet"
    pd.DataFrame({"a": [1, 2]}).to_parquet(other)
    code, _, err = _run(capsys, "inspect-task", other)
    assert code == 1
    _error(err, other, "not a task table", "question_id")
    code, _, err = _run(capsys, "inspect-task", tmp_path)
    assert code == 1
    _error(err, tmp_path, "is a folder")


def test_inspect_task_reads_the_replogle_task_folder_and_its_saved_table(tmp_path, capsys):
    folder = require_replogle_task()
    code, out, err = _run(capsys, "inspect-task", folder)
    assert code == 0, err
    assert "questions per split: train 6386, val 1388, test 1402" in out
    assert "p*: none" in out and "reference probability histogram:" in out
    path = save_task(load_replogle_task(folder), tmp_path / "replogle.parquet")
    code, saved_out, err = _run(capsys, "inspect-task", path)
    assert code == 0, err
    assert "9176 questions" in saved_out and "outcome: replogle_hit" in saved_out
    assert "markers" in saved_out.splitlines()[-1]  # the extra column is listed


def test_task_config_rejects_bad_values_by_field_and_knows_its_sets():
    assert tuple(TASK_SPLITS) == tuple(SPLITS)
    assert {"singles", "measured", "pairs", "unseen_pairs"} <= set(CONDITION_SETS)
    with pytest.raises(ValueError, match="model: give the folder of a saved model"):
        TaskConfig.from_dict({}).check_inputs()  # a pipeline builds one without a model
    with pytest.raises(ValueError, match="n_programs learns programs from observed cells"):
        TaskConfig.from_dict({"model": "m", "n_programs": 3}).check_inputs()
    with pytest.raises(ValueError, match="split must be one of"):
        TaskConfig.from_dict({"model": "m", "split": "by_gene"})
    with pytest.raises(TypeError, match="TaskConfig.n_outcomes"):
        TaskConfig.from_dict({"model": "m", "n_outcomes": "two"})
    with pytest.raises(ValueError, match="program 'p'"):
        TaskConfig.from_dict({"model": "m", "programs": {"p": []}})
    with pytest.raises(ValueError, match="unknown field"):
        TaskConfig.from_dict({"model": "m", "prompt": "x"})
    config = TaskConfig.from_dict({"model": "m", "conditions": "measured"})
    assert config.conditions == ["measured"]
