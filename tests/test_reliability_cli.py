"""Issue 9, CLI and file writing: nothing the user had is replaced, files are readable by
the group as an ordinary write makes them, and every bad input ends in one line that
names the file or option (exit 1 for failures, 2 for usage errors, 130 for Ctrl-C)."""

from __future__ import annotations

import json
import os
import stat

import anndata as ad
import numpy as np
import pytest

from bioreason._io import atomic_write, atomic_write_text
from bioreason.cli import main
from bioreason.stage import check_replaceable, manifest_matches, write_manifest

SMALL = [
    "--n-cells-per-condition",
    "5",
    "--n-genes",
    "30",
    "--n-perturbations",
    "4",
    "--n-combinations",
    "2",
    "--seed",
    "1",
]


def _one_error_line(err: str, *names: str) -> str:
    """stderr is one line 'error: ...' that contains every name."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") or ": error: " in lines[0], err
    assert "Traceback" not in err
    for name in names:
        assert str(name) in lines[0], (name, err)
    return lines[0]


@pytest.fixture(scope="module")
def small_h5ad(tmp_path_factory):
    path = tmp_path_factory.mktemp("screen") / "screen.h5ad"
    assert main(["simulate", "--out", str(path), *SMALL]) == 0
    return path


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


# --- data loss: a file the command did not write is not replaced -------------------


def test_demo_refuses_to_replace_a_screen_it_did_not_write(tmp_path, capsys, monkeypatch):
    import bioreason.data as data

    def not_reached(*args, **kwargs):
        raise AssertionError("the demo went on after finding the user's file")

    monkeypatch.setattr(data, "simulate_screen", not_reached)
    screen = tmp_path / "D" / "data" / "data.h5ad"
    screen.parent.mkdir(parents=True)
    screen.write_bytes(b"the user's own screen")
    assert main(["demo", "--out", str(tmp_path / "D")]) == 1
    _one_error_line(capsys.readouterr().err, screen, "--force")
    assert screen.read_bytes() == b"the user's own screen"


def test_demo_stage_replaces_its_own_output_and_with_force_any(tmp_path, capsys):
    from bioreason.pipelines.run import PipelineConfig, pipeline_stages
    from bioreason.pipelines.stages import run_stages

    def stages(seed):
        config = PipelineConfig.from_dict(
            {"seed": seed, "data": {"screen": {"n_cells_per_condition": 5, "n_genes": 20}}}
        )
        return pipeline_stages(config, tmp_path / "D")[:1]  # the data stage

    out = tmp_path / "D"
    run_stages(stages(0), out)
    screen = out / "data" / "data.h5ad"
    assert ad.read_h5ad(screen).n_vars == 20
    # another seed: the stage re-runs and may replace the file it wrote
    run_stages(stages(1), out)
    assert "[data]" in capsys.readouterr().out
    # the same seed with the file changed since: the file is no longer bioreason's
    screen.write_bytes(b"edited by the user")
    with pytest.raises(FileExistsError, match="data.h5ad"):
        run_stages(stages(1), out)
    assert screen.read_bytes() == b"edited by the user"
    run_stages(stages(1), out, force=True)
    assert ad.read_h5ad(screen).n_vars == 20


def test_demo_refuses_a_model_folder_it_did_not_write_before_training(tmp_path, monkeypatch):
    from bioreason.models import SAMSVAE
    from bioreason.pipelines.run import PipelineConfig, pipeline_stages
    from bioreason.pipelines.stages import run_stages

    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking the output folder")

    config = PipelineConfig.from_dict(
        {"data": {"screen": {"n_cells_per_condition": 5, "n_genes": 20}}}
    )
    out = tmp_path / "D"
    run_stages(pipeline_stages(config, out)[:1], out)
    monkeypatch.setattr(SAMSVAE, "train", no_training)
    mine = out / "vae" / "model" / "notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("mine")
    with pytest.raises(FileExistsError, match="model"):
        run_stages(pipeline_stages(config, out)[:2], out)
    assert mine.read_text() == "mine"


def test_simulate_refuses_an_existing_file_then_force_and_overwrite_replace(tmp_path, capsys):
    out = tmp_path / "screen.h5ad"
    out.write_bytes(b"precious")
    assert main(["simulate", "--out", str(out), *SMALL]) == 1
    _one_error_line(capsys.readouterr().err, out, "--force")
    assert out.read_bytes() == b"precious"
    assert main(["simulate", "--out", str(out), *SMALL, "--force"]) == 0
    assert ad.read_h5ad(out).n_vars == 30
    assert main(["simulate", "--out", str(out), *SMALL, "--overwrite"]) == 0


def test_synthetic_calibration_takes_force(tmp_path, capsys):
    from bioreason.cli import build_parser

    args = build_parser().parse_args(["synthetic-calibration", "--out", "x", "--force"])
    assert args.force
    args = build_parser().parse_args(["synthetic-calibration", "--out", "x", "--overwrite"])
    assert args.force
    args = build_parser().parse_args(["demo", "--force"])
    assert args.force


def test_check_replaceable_reads_the_manifest_record(tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    table = stage / "table.csv"
    check_replaceable(table)  # new: fine
    table.write_text("a,b\n")
    with pytest.raises(FileExistsError, match=r"table\.csv.*was not written by bioreason"):
        check_replaceable(table)
    check_replaceable(table, force=True)
    write_manifest(stage, config={}, seed=0, outputs=[table])
    check_replaceable(table)  # recorded with this hash: ours
    assert manifest_matches(stage, config={}, seed=0)
    table.write_text("a,b\n1,2\n")  # changed since
    with pytest.raises(FileExistsError, match="changed since"):
        check_replaceable(table)
    assert not manifest_matches(stage, config={}, seed=0)
    # a damaged manifest proves nothing and does not crash
    (stage / "manifest.json").write_text("{not json")
    assert not manifest_matches(stage, config={}, seed=0)
    with pytest.raises(FileExistsError, match="table.csv"):
        check_replaceable(table)


def test_check_replaceable_a_folder_output(tmp_path):
    stage = tmp_path / "stage"
    model = stage / "model"
    model.mkdir(parents=True)
    (model / "weights.pt").write_bytes(b"1")
    with pytest.raises(FileExistsError, match="model"):
        check_replaceable(model)
    write_manifest(stage, config={}, seed=None, outputs=[model])
    check_replaceable(model)
    (model / "extra.txt").write_text("the user's")
    with pytest.raises(FileExistsError, match="changed since"):
        check_replaceable(model)


def test_save_result_replaces_only_its_own_results(tmp_path):
    from bioreason.pipelines.vae_results import (
        check_result_path,
        save_result,
        write_results_table,
    )

    path = tmp_path / "run.json"
    path.write_text('{"mine": true}')
    with pytest.raises(FileExistsError, match=r"run\.json.*written to .*run\.json\.new"):
        save_result({"a": 1}, tmp_path, "run")
    assert json.loads(path.read_text()) == {"mine": True}
    assert json.loads((tmp_path / "run.json.new").read_text()) == {"a": 1}  # not lost
    with pytest.raises(FileExistsError, match="run.json"):
        check_result_path(tmp_path, "run")  # the check to make before a long run
    assert save_result({"a": 1}, tmp_path, "run", overwrite=True) == path
    assert save_result({"a": 2}, tmp_path, "run") == path  # written by save_result: replaced
    assert json.loads(path.read_text()) == {"a": 2}
    path.unlink()
    assert write_results_table(tmp_path) == ""  # its manifest is not a result (no KeyError)


# --- file modes: an ordinary write's permissions ------------------------------------


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_follow_the_umask(tmp_path, umask_022):
    atomic_write_text(tmp_path / "a.txt", "x")
    assert _mode(tmp_path / "a.txt") == 0o644
    atomic_write(tmp_path / "b.bin", lambda tmp: tmp.write_bytes(b"x"))
    assert _mode(tmp_path / "b.bin") == 0o644
    os.umask(0o077)
    atomic_write_text(tmp_path / "c.txt", "x")
    assert _mode(tmp_path / "c.txt") == 0o600
    os.umask(0o002)
    atomic_write_text(tmp_path / "d.txt", "x")
    assert _mode(tmp_path / "d.txt") == 0o664


def test_replacing_a_file_keeps_its_mode(tmp_path, umask_022):
    path = tmp_path / "shared.txt"
    atomic_write_text(path, "x")
    os.chmod(path, 0o640)
    atomic_write_text(path, "y")
    assert _mode(path) == 0o640 and path.read_text() == "y"


def test_cli_outputs_are_group_readable(tmp_path, umask_022):
    out = tmp_path / "screen.h5ad"
    assert main(["simulate", "--out", str(out), *SMALL]) == 0
    assert _mode(out) == 0o644
    write_manifest(tmp_path, config={}, seed=0)
    assert _mode(tmp_path / "manifest.json") == 0o644


# --- the command line: one line naming the file or option ---------------------------


def test_inspect_a_text_file(tmp_path, capsys):
    path = tmp_path / "notes.h5ad"
    path.write_text("not hdf5\n")
    assert main(["inspect", str(path)]) == 1
    line = _one_error_line(capsys.readouterr().err, path)
    assert "not an HDF5" in line


def test_inspect_a_truncated_h5ad(tmp_path, capsys, small_h5ad):
    path = tmp_path / "truncated.h5ad"
    path.write_bytes(small_h5ad.read_bytes()[:3000])
    assert main(["inspect", str(path)]) == 1
    line = _one_error_line(capsys.readouterr().err, path)
    assert "truncated" in line


def test_inspect_a_directory_and_a_missing_file(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 1
    assert "is a folder" in _one_error_line(capsys.readouterr().err, tmp_path)
    missing = tmp_path / "missing.h5ad"
    assert main(["inspect", str(missing)]) == 1
    assert "does not exist" in _one_error_line(capsys.readouterr().err, missing)


def test_inspect_an_hdf5_file_that_is_not_anndata(tmp_path, capsys):
    import h5py

    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as handle:
        handle["x"] = np.arange(3)
    assert main(["inspect", str(path)]) == 1
    _one_error_line(capsys.readouterr().err, path)


def test_inspect_a_label_error_is_a_failure(small_h5ad, capsys):
    assert main(["inspect", str(small_h5ad), "--control", "ctrl"]) == 1
    assert "no control cells" in _one_error_line(capsys.readouterr().err)


def test_yaml_syntax_error_names_file_and_line(tmp_path, capsys):
    from bioreason.data import ScreenConfig

    config = tmp_path / "screen.yaml"
    config.write_text("n_genes: 30\nseed: [1\nn_latent: 4\n")
    with pytest.raises(ValueError, match=r"screen\.yaml.*line 2"):
        ScreenConfig.from_yaml(config)
    assert main(["simulate", "--out", str(tmp_path / "x.h5ad"), "--config", str(config)]) == 1
    _one_error_line(capsys.readouterr().err, config, "line 2")
    out = tmp_path / "cal"
    assert main(["synthetic-calibration", "--out", str(out), "--config", str(config)]) == 1
    _one_error_line(capsys.readouterr().err, config, "line 2")
    assert not out.exists()


def test_config_file_that_is_not_a_mapping_or_a_file(tmp_path, capsys):
    from bioreason.data import ScreenConfig

    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(TypeError, match=r"list\.yaml.*mapping"):
        ScreenConfig.from_yaml(listing)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        ScreenConfig.from_yaml(tmp_path)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match=r"binary\.yaml"):
        ScreenConfig.from_yaml(binary)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        ScreenConfig.from_yaml(tmp_path / "missing.yaml")


def test_unknown_field_and_bad_value_name_the_key_and_choices(tmp_path, capsys):
    config = tmp_path / "screen.yaml"
    config.write_text("n_genes: 30\nn_cels: 4\n")
    assert main(["simulate", "--out", str(tmp_path / "x.h5ad"), "--config", str(config)]) == 1
    _one_error_line(capsys.readouterr().err, "n_cels", "n_cells_per_condition", config)
    config.write_text("n_genes: many\n")
    assert main(["simulate", "--out", str(tmp_path / "x.h5ad"), "--config", str(config)]) == 1
    _one_error_line(capsys.readouterr().err, "n_genes", "integer")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--seed", "-1"),
        ("--n-genes", "0"),
        ("--n-cells-per-condition", "-5"),
        ("--mask-probability", "1.5"),
        ("--mask-probability", "nan"),
    ],
)
def test_simulate_bad_numbers_are_usage_errors(tmp_path, capsys, option, value):
    out = tmp_path / "x.h5ad"
    assert _exit_code(["simulate", "--out", str(out), option, value]) == 2
    _one_error_line(capsys.readouterr().err, option)
    assert not out.exists()


def test_simulate_negative_seed_in_yaml_names_the_field(tmp_path, capsys):
    config = tmp_path / "screen.yaml"
    config.write_text("seed: -1\n")
    assert main(["simulate", "--out", str(tmp_path / "x.h5ad"), "--config", str(config)]) == 1
    _one_error_line(capsys.readouterr().err, "seed")


def _exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exit:  # argparse's own usage errors
        return exit.code


def test_simulate_out_is_a_directory_or_has_the_wrong_suffix(tmp_path, capsys):
    folder = tmp_path / "screen.h5ad"
    folder.mkdir()
    for extra in ([], ["--force"]):
        assert main(["simulate", "--out", str(folder), *SMALL, *extra]) == 1
        assert "is a folder" in _one_error_line(capsys.readouterr().err, folder)
    assert folder.is_dir()
    assert main(["simulate", "--out", str(tmp_path), *SMALL]) == 2
    _one_error_line(capsys.readouterr().err, "--out", ".h5ad")


def test_simulate_out_inside_a_file(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert main(["simulate", "--out", str(blocker / "x.h5ad"), *SMALL]) == 1
    _one_error_line(capsys.readouterr().err, blocker)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_simulate_into_a_read_only_folder(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        assert main(["simulate", "--out", str(folder / "x.h5ad"), *SMALL]) == 1
        _one_error_line(capsys.readouterr().err, folder)
    finally:
        folder.chmod(0o700)


def test_synthetic_calibration_bad_methods_are_usage_errors(tmp_path, capsys):
    out = tmp_path / "cal"
    assert main(["synthetic-calibration", "--out", str(out), "--methods", "grpo", "gpro"]) == 2
    _one_error_line(capsys.readouterr().err, "--methods", "gpro", "rloo")
    assert main(["synthetic-calibration", "--out", str(out), "--methods", "grpo", "grpo"]) == 2
    _one_error_line(capsys.readouterr().err, "--methods", "grpo")
    assert _exit_code(["synthetic-calibration", "--out", str(out), "--steps", "0"]) == 2
    _one_error_line(capsys.readouterr().err, "--steps")
    assert not out.exists()


def test_synthetic_calibration_out_a_file_or_a_foreign_folder(tmp_path, capsys):
    afile = tmp_path / "results.txt"
    afile.write_text("mine")
    assert main(["synthetic-calibration", "--out", str(afile)]) == 1
    _one_error_line(capsys.readouterr().err, afile)
    assert main(["synthetic-calibration", "--out", str(afile / "sub")]) == 1
    assert "is a file" in _one_error_line(capsys.readouterr().err, afile)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    assert main(["synthetic-calibration", "--out", str(folder), "--force"]) == 1
    _one_error_line(capsys.readouterr().err, folder)
    assert afile.read_text() == "mine" and sorted(os.listdir(folder)) == ["notes.txt"]


def test_demo_out_a_file(tmp_path, capsys):
    afile = tmp_path / "demo"
    afile.write_text("mine")
    assert main(["demo", "--out", str(afile)]) == 1
    assert "is a file" in _one_error_line(capsys.readouterr().err, afile)
    assert main(["demo", "--out", str(afile / "sub")]) == 1
    assert "is a file" in _one_error_line(capsys.readouterr().err, afile)
    assert afile.read_text() == "mine"


def test_usage_errors_exit_2(capsys):
    assert _exit_code(["simulate"]) == 2
    assert _exit_code(["no-such-command"]) == 2
    assert _exit_code(["simulate", "--out", "x.h5ad", "--seed", "abc"]) == 2
    capsys.readouterr()


def test_ctrl_c_is_one_line_and_130(monkeypatch, capsys):
    import bioreason.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.inspect_data, "main", interrupted)
    assert main(["inspect", "x.h5ad"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"


def test_debug_shows_the_traceback(monkeypatch, tmp_path, capsys):
    path = tmp_path / "notes.h5ad"
    path.write_text("not hdf5\n")
    with pytest.raises(OSError):
        main(["--debug", "inspect", str(path)])
    monkeypatch.setenv("BIOREASON_DEBUG", "1")
    with pytest.raises(OSError):
        main(["inspect", str(path)])


def test_a_bug_is_not_hidden(monkeypatch):
    import bioreason.cli as cli

    def bug(args):
        raise KeyError("internal")

    monkeypatch.setattr(cli.inspect_data, "main", bug)
    with pytest.raises(KeyError):
        main(["inspect", "x.h5ad"])
