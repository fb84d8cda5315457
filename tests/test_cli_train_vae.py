"""``bioreason train-vae``: a perturbation VAE fitted on a tiny simulated screen is saved
as a model folder that ``build-task`` reads, with result.json; reruns skip, resume or
refuse; errors name the file or the option."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bioreason.cli import main

# a handful of steps of a small network
FAST = ["--max-steps", "4", "--batch-size", "64", "--n-particles", "1", "--n-hidden", "16"]
FAST += ["--n-latent", "2", "--no-progress", "--device", "cpu", "--iwelbo-particles", "2"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    from bioreason.data import simulate_screen

    path = tmp_path_factory.mktemp("screen") / "screen.h5ad"
    adata = simulate_screen(
        n_cells_per_condition=12,
        n_genes=20,
        n_latent=2,
        n_perturbations=3,
        n_combinations=1,
        seed=0,
    )
    adata.write_h5ad(path)
    return path


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _error(err: str, *names) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for name in names:
        assert str(name) in lines[0], (name, err)


def test_train_vae_writes_a_model_folder_that_build_task_reads(screen, tmp_path, capsys):
    from bioreason.models import SAMSVAE

    out = tmp_path / "vae"
    code, text, err = _run(capsys, "train-vae", "--adata", screen, "--out", out, *FAST)
    assert code == 0, err
    assert "held-out IWELBO (K=2)" in text and "4 steps" in text
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 4 and result["model_class"] == "SAMSVAE"
    assert math.isfinite(result["test_iwelbo"]) and result["n_test_cells"] > 0
    assert result["n_train_cells"] + result["n_test_cells"] == result["n_cells"]
    assert not (out / "checkpoint").exists()
    model = SAMSVAE.load(out)
    assert model.is_trained and model.config.n_latent == 2 and model.config.n_hidden == 16

    code, text, err = _run(capsys, "train-vae", "--adata", screen, "--out", out, *FAST)
    assert code == 0 and "up to date" in text, err
    # a folder an older bioreason wrote, before the model's learn_mask_prior existed, is
    # up to date while the setting is at its default, and not once it is set
    manifest_path = out / "manifest.json"
    edited = json.loads(manifest_path.read_text())
    assert edited["config"]["vae"]["learn_mask_prior"] is False
    del edited["config"]["vae"]["learn_mask_prior"]
    manifest_path.write_text(json.dumps(edited))
    code, text, err = _run(capsys, "train-vae", "--adata", screen, "--out", out, *FAST)
    assert code == 0 and "up to date" in text, err
    argv = ["train-vae", "--adata", screen, "--out", out, *FAST, "--learn-mask-prior"]
    code, text, err = _run(capsys, *argv)
    assert code != 0 and "--force" in err, err

    task = tmp_path / "task.parquet"
    argv = ["build-task", "--model", out, "--out", task, "--readouts", "gene00000"]
    argv += ["--target-se", "0.2", "--max-draws", "32", "--option", "n_cells=10"]
    code, text, err = _run(capsys, *argv)
    assert code == 0, err
    assert task.exists() and "questions" in text


def test_train_vae_other_model_without_held_out_cells(screen, tmp_path, capsys):
    out = tmp_path / "cvae"
    argv = ["train-vae", "--adata", screen, "--out", out, *FAST]
    code, text, err = _run(capsys, *argv, "--model", "conditional_vae", "--test-fraction", "0")
    assert code == 0, err
    assert "ConditionalVAE" in text and "training loss" in text
    result = json.loads((out / "result.json").read_text())
    assert result["test_iwelbo"] is None and result["n_test_cells"] == 0
    assert math.isfinite(result["final_train_loss"])


def test_train_vae_reads_a_config_file(screen, tmp_path, capsys):
    config = tmp_path / "vae.yaml"
    config.write_text("model: cpa_vae\nn_latent: 3\nmax_steps: 2\nlr: 0.01\n")
    out = tmp_path / "cpa"
    argv = ["train-vae", "--adata", screen, "--out", out, "--config", config, "--no-progress"]
    code, _, err = _run(capsys, *argv, "--device", "cpu", "--n-hidden", "8", "--max-steps", "3")
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    assert result["model_class"] == "CPAVAE" and result["steps"] == 3  # the flag wins
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["vae"]["n_latent"] == 3 and manifest["config"]["train"]["lr"] == 0.01

    config.write_text("n_latnt: 3\n")
    code, _, err = _run(
        capsys, "train-vae", "--adata", screen, "--out", tmp_path / "x", "--config", config
    )
    assert code == 1
    _error(err, "n_latnt", "n_latent", config)


def test_train_vae_refuses_an_existing_out_without_force(screen, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    code, _, err = _run(capsys, "train-vae", "--adata", screen, "--out", out, *FAST)
    assert code == 1
    _error(err, out, "--force")
    assert not (out / "model.pt").exists()

    trained = tmp_path / "trained"
    assert _run(capsys, "train-vae", "--adata", screen, "--out", trained, *FAST)[0] == 0
    before = (trained / "model.pt").read_bytes()
    code, _, err = _run(
        capsys, "train-vae", "--adata", screen, "--out", trained, *FAST, "--lr", "0.01"
    )
    assert code == 1
    _error(err, trained, "other settings", "--force")
    assert (trained / "model.pt").read_bytes() == before
    code, _, err = _run(
        capsys, "train-vae", "--adata", screen, "--out", trained, *FAST, "--lr", "0.01", "--force"
    )
    assert code == 0, err
    assert json.loads((trained / "manifest.json").read_text())["config"]["train"]["lr"] == 0.01

    code, _, err = _run(capsys, "train-vae", "--adata", screen, "--out", out, *FAST, "--force")
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "the user's" and (out / "model.pt").exists()


def test_train_vae_missing_file_and_bad_values(tmp_path, capsys):
    missing = tmp_path / "missing.h5ad"
    code, _, err = _run(capsys, "train-vae", "--adata", missing, "--out", tmp_path / "o")
    assert code == 1
    _error(err, missing, "does not exist")
    assert not (tmp_path / "o").exists()
    for option, value, names in (
        ("--likelihood", "gaussian", ("--likelihood", "'nb'", "'poisson'")),
        ("--model", "vae", ("--model", "sams_vae", "svae_plus")),
        ("--max-steps", "0", ("--max-steps",)),
        ("--test-fraction", "1.5", ("--test-fraction",)),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["train-vae", "--adata", str(missing), "--out", "o", option, value])
        assert exit_info.value.code == 2
        _error(capsys.readouterr().err, *names)


def test_train_vae_resumes_an_interrupted_run(screen, tmp_path, capsys, monkeypatch):
    from bioreason.models import SAMSVAE

    original = SAMSVAE.save

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "part"
    argv = ["train-vae", "--adata", screen, "--out", out, *FAST, "--checkpoint-every", "2"]
    monkeypatch.setattr(SAMSVAE, "save", interrupted)
    assert _run(capsys, *argv)[0] == 130
    assert (out / "checkpoint").is_dir() and not (out / "result.json").exists()
    monkeypatch.setattr(SAMSVAE, "save", original)
    code, text, err = _run(capsys, *argv)
    assert code == 0, err
    assert "resuming" in text
    assert json.loads((out / "result.json").read_text())["steps"] == 4


def test_train_vae_reuses_the_leftovers_of_a_failed_run_of_other_settings(
    screen, tmp_path, capsys, monkeypatch
):
    from bioreason.models import SAMSVAE

    original = SAMSVAE.save

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "failed"
    argv = ["train-vae", "--adata", screen, "--out", out, *FAST, "--checkpoint-every", "2"]
    monkeypatch.setattr(SAMSVAE, "save", interrupted)
    assert _run(capsys, *argv)[0] == 130
    assert (out / "checkpoint").is_dir()
    monkeypatch.setattr(SAMSVAE, "save", original)
    # other settings: nothing finished to protect, so the folder is reused (no --force)
    # and the old checkpoint is not resumed
    code, text, err = _run(capsys, *argv, "--lr", "0.01")
    assert code == 0, err
    assert "resuming" not in text and not (out / "checkpoint").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["train"]["lr"] == 0.01
    assert None not in manifest["outputs"].values()
    assert json.loads((out / "result.json").read_text())["steps"] == 4
    code, text, _ = _run(capsys, *argv, "--lr", "0.01")
    assert code == 0 and "up to date" in text


def test_train_vae_on_the_wrong_file_records_the_failure_and_allows_the_retry(
    screen, tmp_path, capsys
):
    """issue 20: the corrected command is not refused ("other settings or data") after a
    run on the wrong file; the failed run's manifest says it failed; a file of the user's
    in the folder is still never replaced or deleted."""
    wrong = tmp_path / "wrong.h5ad"
    wrong.write_text("not an h5ad")
    out = tmp_path / "model"
    code, _, err = _run(capsys, "train-vae", "--adata", wrong, "--out", out, *FAST)
    assert code != 0 and "wrong.h5ad" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "wrong.h5ad" in manifest["error"]
    mine = out / "notes.txt"
    mine.write_text("mine")
    code, _, err = _run(capsys, "train-vae", "--adata", screen, "--out", out, *FAST)
    assert code == 1 and "notes.txt" in err and "--force" in err
    assert mine.read_text() == "mine"
    mine.unlink()
    code, text, err = _run(capsys, "train-vae", "--adata", screen, "--out", out, *FAST)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert "status" not in manifest and None not in manifest["outputs"].values()
    assert (out / "result.json").is_file()


def test_train_vae_result_equals_fit_vae_on_its_split(screen, tmp_path, capsys):
    import anndata as ad

    from bioreason.models import TrainVAEConfig, fit_vae

    out = tmp_path / "same"
    code, _, err = _run(capsys, "train-vae", "--adata", screen, "--out", out, *FAST, "--seed", "5")
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    config = TrainVAEConfig.from_dict(
        {"max_steps": 4, "batch_size": 64, "n_particles": 1, "n_hidden": 16, "n_latent": 2}
        | {"progress": False, "device": "cpu", "iwelbo_particles": 2, "seed": 5}
    )
    adata = ad.read_h5ad(screen)
    split = config.split(adata.n_obs)
    model, fitted = fit_vae(adata, split, "sams_vae", config.vae, config.train, config.evaluation)
    assert result["test_iwelbo"] == fitted["iwelbo_heldout"]
    assert result["final_train_loss"] == fitted["final_train_loss"]
    assert result["final_validation_loss"] == fitted["final_validation_loss"]
    assert result["n_test_cells"] == split.test.size
    assert result["n_train_cells"] == split.train.size + split.val.size
    # and the held-out IWELBO is the model's own estimate on the test cells, seeded by
    # the run's seed (train-vae's evaluation seed is None)
    assert fitted["iwelbo_heldout"] == model.iwelbo(adata[split.test].copy(), n_particles=2, seed=5)
