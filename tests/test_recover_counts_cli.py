"""``--recover-counts`` / ``recover_counts: true``: log-normalized files on the command
line and in a pipeline, and errors that name the flag (issue 20)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scanpy as sc
import yaml

from bioreason.cli import main


def _log_normalized(screen, path, base=None):
    """The screen's counts as log(1 + normalized) values in X, no counts layer."""
    adata = screen.copy()
    adata.X = adata.layers.pop("counts").astype(np.float64)
    adata.obs["ncounts"] = np.asarray(adata.X.sum(axis=1)).ravel()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata, base=base)
    adata.uns.pop("log1p", None)
    adata.uns.pop("ground_truth", None)
    adata.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def tiny_screen():
    from bioreason.data import simulate_screen

    return simulate_screen(
        n_cells_per_condition=20, n_genes=40, n_perturbations=4, n_combinations=2, seed=5
    )


def test_inspect_suggests_the_flag_and_recovers_log2_data(tiny_screen, tmp_path, capsys):
    path = _log_normalized(tiny_screen, tmp_path / "log2.h5ad", base=2)
    assert main(["inspect", str(path)]) == 1
    err = capsys.readouterr().err
    assert "--recover-counts" in err and "--layer X" in err
    assert main(["inspect", str(path), "--recover-counts"]) == 0
    out = capsys.readouterr().out
    assert "base 2 (log2)" in out
    assert f"{tiny_screen.n_obs} cells" in out


def test_inspect_recover_counts_on_raw_counts_says_so(tiny_screen, tmp_path, capsys):
    path = tmp_path / "raw.h5ad"
    raw = tiny_screen.copy()
    raw.X = raw.layers.pop("counts")
    raw.uns.pop("ground_truth", None)
    raw.write_h5ad(path)
    assert main(["inspect", str(path), "--recover-counts"]) == 1
    assert "raw counts already" in capsys.readouterr().err


def test_train_vae_recover_counts(tiny_screen, tmp_path, capsys):
    path = _log_normalized(tiny_screen, tmp_path / "log1p.h5ad")
    out = tmp_path / "model"
    args = ["train-vae", "--adata", str(path), "--out", str(out), "--max-steps", "2"]
    assert main([*args, "--n-latent", "2", "--n-hidden", "8", "--recover-counts"]) == 0
    assert "natural log" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["recover_counts"] is True


def test_pipeline_data_stage_recovers_counts_and_names_a_missing_file(
    tiny_screen, tmp_path, capsys
):
    path = _log_normalized(tiny_screen, tmp_path / "log10.h5ad", base=10)
    config = tmp_path / "run.yaml"
    data = {"source": "h5ad", "path": str(path), "recover_counts": True}
    config.write_text(yaml.safe_dump({"name": "r", "data": data}))
    out = tmp_path / "run"
    argv = ["run", str(config), "--out", str(out), "--only", "data", "--no-report"]
    assert main(argv) == 0
    assert "base 10 (log10)" in capsys.readouterr().out
    import anndata as ad

    written = ad.read_h5ad(out / "data" / "data.h5ad")
    assert (written.layers["counts"] != tiny_screen.layers["counts"]).nnz == 0
    # a missing file: the option is named, not h5py's text
    config.write_text(yaml.safe_dump({"name": "r", "data": {**data, "path": "absent.h5ad"}}))
    argv[3] = str(tmp_path / "run2")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "data.path" in err and "absent.h5ad" in err and "does not exist" in err
    assert "h5py" not in err and "unable to" not in err.lower()


def test_recover_counts_is_refused_for_a_registry_dataset():
    from bioreason.pipelines.config import DataStageConfig

    with pytest.raises(ValueError, match="recover_counts: true applies to source: h5ad"):
        DataStageConfig(source="dataset", path="norman19", recover_counts=True)
    with pytest.raises(TypeError, match="recover_counts must be true or false"):
        DataStageConfig(source="h5ad", path="x.h5ad", recover_counts="yes")
