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
