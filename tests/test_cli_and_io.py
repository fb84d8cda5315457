import subprocess
import sys

import anndata as ad
import pytest

from bioreason import __version__
from bioreason._io import atomic_path
from bioreason.cli import main
from bioreason.config import Config
from bioreason.stage import manifest_matches, write_manifest


def test_help_and_version(capsys):
    assert main([]) == 0
    assert "simulate" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--version"])
    assert __version__ in capsys.readouterr().out
    result = subprocess.run(
        [sys.executable, "-m", "bioreason.cli", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "inspect" in result.stdout


def test_help_does_not_import_torch():
    # building every subcommand's parser stays light: `bioreason --help` answers at once
    code = (
        "import sys\n"
        "from bioreason.cli import main\n"
        "for args in ([], ['--help'], ['run', '--help'], ['report', '--help']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_simulate_writes_h5ad_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "screen.h5ad"
    args = [
        "simulate",
        "--out",
        str(out),
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
    assert main(args) == 0
    adata = ad.read_h5ad(out)
    assert adata.shape == (5 * 7, 30)
    before = out.stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 1  # a failure (1), not a usage error (2)
    assert "already exists; choose another --out or pass --force" in capsys.readouterr().err
    assert out.stat().st_mtime_ns == before
    assert main([*args, "--overwrite"]) == 0
    assert main(["inspect", str(out)]) == 0
    assert "35 cells x 30 genes" in capsys.readouterr().out
    assert main(["inspect", str(out), "--control", "ctrl"]) == 1
    assert "no control cells" in capsys.readouterr().err


def test_simulate_config_yaml_with_bad_field(tmp_path, capsys):
    config = tmp_path / "screen.yaml"
    config.write_text("n_genes: 30\nn_cels: 4\n")
    assert main(["simulate", "--out", str(tmp_path / "x.h5ad"), "--config", str(config)]) == 1
    assert "unknown field(s) ['n_cels']" in capsys.readouterr().err


def test_atomic_path_keeps_existing_file_on_failure(tmp_path):
    target = tmp_path / "result.txt"
    target.write_text("user data")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half written")
        raise RuntimeError("interrupted")
    assert target.read_text() == "user data"
    assert list(tmp_path.iterdir()) == [target]
    with (
        pytest.raises(FileExistsError, match="already exists"),
        atomic_path(target, overwrite=False),
    ):
        pass


def test_manifest_matches_config_seed_and_inputs(tmp_path):
    source = tmp_path / "input.txt"
    source.write_text("a")
    write_manifest(tmp_path / "stage", config={"k": 1}, seed=0, inputs={"x": source})
    assert manifest_matches(tmp_path / "stage", config={"k": 1}, seed=0, inputs={"x": source})
    assert not manifest_matches(tmp_path / "stage", config={"k": 2}, seed=0, inputs={"x": source})
    assert not manifest_matches(tmp_path / "stage", config={"k": 1}, seed=1, inputs={"x": source})
    source.write_text("b")
    assert not manifest_matches(tmp_path / "stage", config={"k": 1}, seed=0, inputs={"x": source})


def test_config_round_trip(tmp_path):
    from dataclasses import dataclass

    @dataclass
    class Example(Config):
        rate: float = 0.1
        names: tuple[str, ...] = ("a",)
        steps: int | None = None

    cfg = Example.from_dict({"rate": 1, "names": ["x", "y"]})
    assert cfg.rate == 1.0 and cfg.names == ("x", "y")
    cfg.to_yaml(tmp_path / "c.yaml")
    assert Example.from_yaml(tmp_path / "c.yaml") == cfg
    with pytest.raises(TypeError, match=r"Example.steps must be int \| NoneType"):
        Example.from_dict({"steps": "ten"})
