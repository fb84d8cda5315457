import pytest

from bioreason.cli import main


@pytest.mark.slow
def test_demo_runs_end_to_end_and_skips_completed_stages(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    first = capsys.readouterr().out
    assert "[vae] test IWELBO" in first and "[grpo] ece" in first
    assert (out / "calibration" / "metrics.csv").exists()
    assert (out / "vae" / "model").is_dir()
    assert main(["demo", "--out", str(out)]) == 0
    second = capsys.readouterr().out
    assert "[screen] up to date" in second and "[vae] up to date" in second
    assert "[grpo] up to date, skipped" in second


def test_demo_vae_stage_writes_its_result_and_skips_when_up_to_date(
    tmp_path, small_screen, capsys, monkeypatch
):
    import json

    import bioreason.pipelines.demo as demo
    from bioreason.data import PerturbationData, split_heldout_combinations

    monkeypatch.setattr(demo, "DEMO_VAE", {"n_latent": 2, "n_hidden": 8})
    monkeypatch.setattr(demo, "DEMO_VAE_STEPS", 2)
    adata = small_screen.copy()
    screen = tmp_path / "screen.h5ad"
    adata.write_h5ad(screen)
    split = split_heldout_combinations(PerturbationData.from_anndata(adata), fraction=0.25, seed=0)
    demo._vae_stage(tmp_path / "D", adata, screen, split, seed=0)
    first = capsys.readouterr().out
    assert "[vae] SAMS-VAE trained" in first and "[vae] test IWELBO" in first
    result = json.loads((tmp_path / "D" / "vae" / "result.json").read_text())
    assert set(result) >= {"test_iwelbo", "ate_pearson_all", "ate_pearson_top20", "heldout"}
    demo._vae_stage(tmp_path / "D", adata, screen, split, seed=0)
    second = capsys.readouterr().out
    assert "[vae] up to date" in second and "trained" not in second
    assert second.splitlines()[-2:] == first.splitlines()[-2:]  # the same metrics, read back
