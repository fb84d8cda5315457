"""Bad input to the models, their checkpoints and saved folders (issue 9): every case
either raises a ValueError / TypeError that names what was wrong, where and what to do,
or does the documented thing; nothing the user had is overwritten."""

from __future__ import annotations

import json
import logging
import pickle
import shutil

import numpy as np
import pytest
import torch
from _models_util import tiny_screen

from bioreason.models import CPAVAE, SAMSVAE, SVAEPlus
from bioreason.models import training as training_module
from bioreason.rl.tabular import TabularPolicy, TabularRLConfig, TabularTrainer

COMMON = dict(batch_size=64, progress=False, device="cpu", seed=3)


@pytest.fixture(scope="module")
def screen():
    return tiny_screen()


def make(adata, cls=SAMSVAE, **kwargs):
    cls.setup_anndata(adata)
    return cls(adata, n_latent=3, n_hidden=kwargs.pop("n_hidden", 16), **kwargs)


@pytest.fixture(scope="module")
def model(screen):
    return make(screen.copy())


class _Payload:
    """A class a weights-only load must refuse (a pickle may run code on load)."""

    def __reduce__(self):
        return (print, ("pickle payload executed",))


def _assert_speaks(err: pytest.ExceptionInfo, path) -> None:
    message = str(err.value)
    assert str(path) in message, message
    assert "weights_only" not in message, message
    assert err.value.__cause__ is None or "weights_only" not in str(err.value.__cause__)


# ----------------------------------------------------------------- VAE checkpoints
def test_resume_from_a_missing_checkpoint_folder_names_it(screen, tmp_path):
    model = make(screen.copy())
    folder = tmp_path / "chekpoints"  # misspelled
    with pytest.raises(ValueError, match=r"chekpoints.*does not exist"):
        model.train(max_steps=2, checkpoint_dir=folder, resume=True, **COMMON)
    assert not folder.exists()


def test_resume_from_an_empty_folder_starts_fresh_and_says_so(screen, tmp_path, caplog):
    model = make(screen.copy())
    with caplog.at_level(logging.WARNING, logger="bioreason"):
        history = model.train(max_steps=2, checkpoint_dir=tmp_path, resume=True, **COMMON)
    assert len(history) == 2
    assert "no checkpoint" in caplog.text and str(tmp_path) in caplog.text
    assert (tmp_path / "checkpoint.pt").exists()


def test_checkpoint_dir_alone_checkpoints_at_the_default_interval(screen, tmp_path, monkeypatch):
    saved_steps = []
    original = training_module._save_checkpoint

    def spy(path, state):
        saved_steps.append(state["step"])
        original(path, state)

    monkeypatch.setattr(training_module, "_save_checkpoint", spy)
    monkeypatch.setattr(training_module, "DEFAULT_CHECKPOINT_EVERY", 2)
    model = make(screen.copy())
    model.train(max_steps=5, checkpoint_dir=tmp_path / "new", **COMMON)
    assert saved_steps == [2, 4, 5]  # every DEFAULT_CHECKPOINT_EVERY steps and at the end
    assert (tmp_path / "new" / "checkpoint.pt").exists()
    assert "DEFAULT_CHECKPOINT_EVERY" in training_module.TrainConfig.__doc__ or (
        "1,000" in training_module.TrainConfig.__doc__
    )


def test_checkpoint_loads_with_weights_only(screen, tmp_path):
    model = make(screen.copy())
    model.train(max_steps=2, checkpoint_dir=tmp_path, checkpoint_every=1, **COMMON)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 2 and "fingerprint" in state


def _differs(screen, **change):
    """Settings of a second run whose checkpoint must be refused."""
    adata = change.pop("adata", screen).copy()
    model = make(adata, n_hidden=change.pop("n_hidden", 16))
    settings = {**COMMON, **change}
    return model, settings


@pytest.mark.parametrize(
    "change, field",
    [
        ({"batch_size": 32}, "batch_size"),
        ({"lr": 0.01}, "lr"),
        ({"n_hidden": 8}, "n_hidden"),
        ({"adata": "other"}, "data."),
        ({"train_indices": np.arange(100)}, "train"),
    ],
)
def test_checkpoint_of_another_run_is_refused_naming_the_difference(
    screen, tmp_path, change, field
):
    first = make(screen.copy())
    first.train(max_steps=2, checkpoint_dir=tmp_path, **COMMON)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    if change.get("adata") == "other":
        change["adata"] = tiny_screen(seed=1)
    second, settings = _differs(screen, **change)
    with pytest.raises(ValueError, match=rf"checkpoint\.pt.*{field}") as err:
        second.train(max_steps=4, checkpoint_dir=tmp_path, resume=True, **settings)
    assert "resume=False" in str(err.value) or "another checkpoint_dir" in str(err.value)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_a_new_run_never_overwrites_a_checkpoint(screen, tmp_path):
    make(screen.copy()).train(max_steps=2, checkpoint_dir=tmp_path, **COMMON)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(ValueError, match=r"checkpoint\.pt.*resume=True"):
        make(screen.copy()).train(max_steps=2, checkpoint_dir=tmp_path, **COMMON)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_resume_beyond_max_steps_is_refused(screen, tmp_path):
    make(screen.copy()).train(max_steps=4, checkpoint_dir=tmp_path, **COMMON)
    with pytest.raises(ValueError, match=r"step 4.*max_steps=2"):
        make(screen.copy()).train(max_steps=2, checkpoint_dir=tmp_path, resume=True, **COMMON)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "pickle", "no_header"])
def test_a_damaged_checkpoint_is_named_and_unsafe_loading_never_suggested(
    screen, tmp_path, damage, capsys
):
    make(screen.copy()).train(max_steps=2, checkpoint_dir=tmp_path, **COMMON)
    path = tmp_path / "checkpoint.pt"
    if damage == "garbage":
        path.write_bytes(b"not a checkpoint")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "pickle":
        path.write_bytes(pickle.dumps({"step": _Payload()}))
    else:
        torch.save({"step": 1}, path)
    with pytest.raises(ValueError, match="damaged|another version|not written by") as err:
        make(screen.copy()).train(max_steps=4, checkpoint_dir=tmp_path, resume=True, **COMMON)
    _assert_speaks(err, path)
    assert "pickle payload executed" not in capsys.readouterr().out


# ----------------------------------------------------------------- RL checkpoints
GRID = torch.arange(1, 100, dtype=torch.float64) / 100


def _rl_trainer(outcome_seed: int = 0, **overrides) -> TabularTrainer:
    settings = dict(method="grpo", group_size=2, steps=6, checkpoint_every=2, log_every=2)
    settings.update(overrides)
    categories = torch.arange(12) % 3
    outcomes = (torch.rand(12, generator=torch.Generator().manual_seed(outcome_seed)) < 0.5).long()
    policy = TabularPolicy(3, GRID)
    return TabularTrainer(policy, categories, outcomes, TabularRLConfig(**settings))


def _interrupted_checkpoint(path, **overrides):
    """A run whose last checkpoint (step 4) is before its end: an interrupted run."""
    trainer = _rl_trainer(**{"steps": 5, **overrides})
    trainer.train(checkpoint_path=path, progress=False)
    return trainer


def test_rl_resume_true_needs_the_checkpoint(tmp_path):
    path = tmp_path / "runs" / "chekpoint.pt"
    with pytest.raises(ValueError, match=r"chekpoint\.pt.*(does not exist|not found)"):
        _rl_trainer().train(checkpoint_path=path, resume=True, progress=False)


def test_rl_resume_finds_and_continues_the_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    _interrupted_checkpoint(path, steps=6)  # steps 2 and 4 are checkpointed, not 6
    torch.load(path, weights_only=True)  # loads without unpickling arbitrary objects
    resumed = _rl_trainer()
    timing = resumed.train(checkpoint_path=path, resume=True, progress=False)
    assert resumed.step == 6 and timing["steps_run"] == 2


def test_rl_new_run_never_overwrites_a_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    _interrupted_checkpoint(path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"checkpoint\.pt.*resume"):
        _rl_trainer().train(checkpoint_path=path, resume=False, progress=False)
    assert path.read_bytes() == before


def test_rl_checkpoint_of_other_data_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    _interrupted_checkpoint(path)
    with pytest.raises(ValueError, match=r"checkpoint\.pt.*outcomes"):
        _rl_trainer(outcome_seed=5, steps=5).train(checkpoint_path=path, progress=False)


def test_rl_checkpoint_of_another_config_names_the_fields(tmp_path):
    path = tmp_path / "checkpoint.pt"
    _interrupted_checkpoint(path)
    with pytest.raises(ValueError, match=r"checkpoint\.pt.*group_size: 2 -> 4"):
        _rl_trainer(group_size=4, steps=5).train(checkpoint_path=path, progress=False)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "pickle"])
def test_rl_damaged_checkpoint_is_named(tmp_path, damage, capsys):
    path = tmp_path / "checkpoint.pt"
    _interrupted_checkpoint(path)
    if damage == "garbage":
        path.write_bytes(b"xx")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(pickle.dumps({"step": _Payload()}))
    with pytest.raises(ValueError, match="damaged|another version") as err:
        _rl_trainer(steps=5).train(checkpoint_path=path, progress=False)
    _assert_speaks(err, path)
    assert "pickle payload executed" not in capsys.readouterr().out


# ----------------------------------------------------------------- saved folders
@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "model"
    model.save(folder)
    return folder


@pytest.mark.parametrize(
    "name, content",
    [
        ("model.pt", b"garbage"),
        ("model.pt", "truncated"),
        ("model.pt", b""),
        ("model.pt", "pickle"),
        ("model.pt", "other_content"),
        ("attributes.json", b"{not json"),
        ("attributes.json", b"[1, 2]"),
        ("attributes.json", "missing_key"),
        ("config.yaml", b"n_hidden: [1,\n"),
        ("config.yaml", b"n_hidden: 8\n"),  # valid YAML, weights of another architecture
    ],
)
def test_a_damaged_model_folder_names_the_file(saved, tmp_path, name, content, capsys):
    folder = tmp_path / "copy"
    shutil.copytree(saved, folder)
    path = folder / name
    if content == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif content == "pickle":
        path.write_bytes(pickle.dumps({"state_dict": _Payload()}))
    elif content == "other_content":
        torch.save({"x": torch.ones(1)}, path)
    elif content == "missing_key":
        attributes = json.loads(path.read_text())
        del attributes["gene_names"]
        path.write_text(json.dumps(attributes))
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match="damaged|another version|does not match") as err:
        SAMSVAE.load(folder)
    _assert_speaks(err, path if name != "config.yaml" or content != b"n_hidden: 8\n" else folder)
    assert "pickle payload executed" not in capsys.readouterr().out


def test_load_of_a_missing_folder_or_a_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*does not exist"):
        SAMSVAE.load(tmp_path / "nowhere")
    (tmp_path / "afile").write_text("hello")
    with pytest.raises(ValueError, match=r"afile.*not a folder"):
        SAMSVAE.load(tmp_path / "afile")


def test_save_refuses_an_existing_folder_and_keeps_the_users_files(model, tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"results.*overwrite=True"):
        model.save(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    model.save(folder, overwrite=True)
    assert (folder / "notes.txt").read_text() == "mine"
    (tmp_path / "afile").write_text("hello")
    with pytest.raises(FileExistsError, match=r"afile.*not a folder"):
        model.save(tmp_path / "afile", overwrite=True)
    assert (tmp_path / "afile").read_text() == "hello"


# ----------------------------------------------------------------- loaded without AnnData
@pytest.mark.parametrize(
    "call, fix",
    [
        (lambda m: m.get_latent_representation(), r"get_latent_representation\(adata="),
        (lambda m: m.iwelbo(), r"iwelbo\(adata="),
        (lambda m: m.replicate_cells(), r"replicate_cells\(adata="),
        (lambda m: m.training_conditions(), r"SAMSVAE\.load\(.*adata="),
        (lambda m: m.average_treatment_effect(n_cells=5), r"perturbations=\["),
        (lambda m: m.train(max_steps=1, progress=False), r"SAMSVAE\.load\(.*adata="),
    ],
)
def test_a_model_loaded_without_anndata_says_how_to_fix_each_call(saved, call, fix):
    loaded = SAMSVAE.load(saved)
    with pytest.raises(ValueError, match=fix) as err:
        call(loaded)
    if "adata=" not in fix:
        assert "pass adata=" not in str(err.value)


# ----------------------------------------------------------------- generation
@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m: m.sample([]), ValueError, "no conditions"),
        (lambda m: m.posterior_predictive([], n_draws=2), ValueError, "no conditions"),
        (lambda m: m.average_treatment_effect([], n_cells=5), ValueError, "no conditions"),
        (lambda m: m.sample(None), TypeError, "list of condition labels"),
        (lambda m: m.sample(5), TypeError, "list of condition labels"),
        (lambda m: m.sample(["P0"], n_cells=2.5), ValueError, "n_cells"),
        (lambda m: m.sample(["P0"], n_cells="3"), ValueError, "n_cells"),
        (lambda m: m.sample(["P0"], n_cells=-1), ValueError, "n_cells"),
        (lambda m: m.sample(["P0"], n_cells=0), ValueError, "n_cells"),
        (lambda m: m.sample(["P0"], n_cells=3, n_global_draws="a"), ValueError, "n_global"),
        (lambda m: m.sample(["P0"], n_cells=3, n_global_draws=0.5), ValueError, "n_global"),
        (lambda m: m.posterior_predictive(["P0"], n_draws=0), ValueError, "n_draws"),
        (lambda m: m.sample(["P0"], n_cells=3, seed=-1), ValueError, "seed"),
        (lambda m: m.sample(["P0"], n_cells=3, seed="a"), TypeError, "seed"),
        (
            lambda m: m.sample(["P0"], n_cells=5, library_size=np.full(3, 1e3)),
            ValueError,
            r"library_size.*5 values.*one per generated cell.*\(3,\)",
        ),
        (lambda m: m.sample(["P0"], n_cells=3, library_size="abc"), TypeError, "library_size"),
        (lambda m: m.sample(["P0", "P0"], n_cells=3), ValueError, "twice"),
        (lambda m: m.sample(["P0+P1", "P1+P0"], n_cells=3), ValueError, "twice"),
        (lambda m: m.sample(["ZZZ"], n_cells=3), ValueError, r"conditions asked for.*ZZZ"),
        (lambda m: m.posterior_predictive(["ZZZ"], n_draws=2), ValueError, "ZZZ"),
        (lambda m: m.average_treatment_effect(["ZZZ"], n_cells=5), ValueError, "ZZZ"),
    ],
)
def test_generation_rejects_bad_arguments_clearly(model, call, error, match):
    with pytest.raises(error, match=match) as err:
        call(model)
    assert "obs[" not in str(err.value)  # the labels were not an obs column


def test_average_treatment_effect_takes_one_label_as_a_string(model):
    ate = model.average_treatment_effect("P0", n_cells=5)
    assert list(ate.index) == ["P0"]


def test_sample_is_per_condition_and_keeps_the_control_label_asked_for(screen):
    adata = screen.copy()
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    controls = np.flatnonzero(labels == "control")
    labels[controls[::2]] = "ctrl2"
    adata.obs["perturbation"] = labels
    SAMSVAE.setup_anndata(adata, control=["control", "ctrl2"])
    two_controls = SAMSVAE(adata, n_latent=3, n_hidden=16)
    generated = two_controls.sample(["ctrl2", "control", "P0"], n_cells=3)
    assert generated.obs["perturbation"].tolist() == ["ctrl2"] * 3 + ["control"] * 3 + ["P0"] * 3
    predictive = two_controls.posterior_predictive(["ctrl2", "P0"], n_cells=2, n_draws=2)
    assert predictive.conditions == ["ctrl2", "P0"]
    assert "per condition" in SAMSVAE.sample.__doc__


# ----------------------------------------------------------------- analysis
@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m, a: m.iwelbo(a, n_particles=0), ValueError, "n_particles"),
        (lambda m, a: m.iwelbo(a, n_particles=2.5), ValueError, "n_particles"),
        (lambda m, a: m.get_perturbation_effects(n_draws=0), ValueError, "n_draws"),
        (lambda m, a: m.get_perturbation_effects(n_draws=-1), ValueError, "n_draws"),
        (lambda m, a: m.get_latent_representation(a[:0]), ValueError, "no cells"),
        (lambda m, a: m.iwelbo(a[:0]), ValueError, "no cells"),
        (lambda m, a: m.replicate_cells(a[:0]), ValueError, "no cells"),
        (lambda m, a: m.replicate_cells(a, n_global_draws=0), ValueError, "n_global_draws"),
    ],
)
def test_analysis_rejects_bad_arguments_clearly(model, screen, call, error, match):
    with pytest.raises(error, match=match):
        call(model, screen)


# ----------------------------------------------------------------- training indices
@pytest.mark.parametrize(
    "indices, error, match",
    [
        ({"train_indices": np.array([0.5, 1.2])}, TypeError, "train_indices.*integer"),
        ({"train_indices": np.array([], dtype=int)}, ValueError, "train_indices.*no cells"),
        ({"train_indices": np.array([0, 10**6])}, ValueError, r"train_indices.*1000000"),
        ({"train_indices": np.array([-1, 3])}, ValueError, r"train_indices.*-1"),
        ({"train_indices": np.arange(20).reshape(4, 5)}, ValueError, "train_indices.*1-D"),
        ({"train_indices": np.ones(7, dtype=bool)}, ValueError, "train_indices.*mask"),
        ({"train_indices": np.array([1, 1, 2])}, ValueError, "train_indices.*repeat"),
        ({"validation_indices": np.arange(5)}, ValueError, "train_indices"),
        (
            {"train_indices": np.arange(50), "validation_indices": np.arange(40, 60)},
            ValueError,
            "both",
        ),
        ({"validation_fraction": "0.1"}, TypeError, "validation_fraction"),
    ],
)
def test_training_indices_are_checked(screen, indices, error, match):
    model = make(screen.copy())
    with pytest.raises(error, match=match):
        model.train(max_steps=1, **COMMON, **indices)


def test_a_boolean_mask_selects_cells_like_their_indices(screen):
    mask = np.zeros(screen.n_obs, dtype=bool)
    mask[::3] = True
    by_mask = make(screen.copy())
    by_mask.train(max_steps=2, train_indices=mask, validation_indices=~mask, **COMMON)
    by_index = make(screen.copy())
    by_index.train(
        max_steps=2,
        train_indices=np.flatnonzero(mask),
        validation_indices=np.flatnonzero(~mask),
        **COMMON,
    )
    np.testing.assert_array_equal(
        by_mask.history["train_loss"].to_numpy(), by_index.history["train_loss"].to_numpy()
    )


def test_other_models_share_the_checks(screen):
    for cls in (CPAVAE, SVAEPlus):
        other = make(screen.copy(), cls=cls)
        with pytest.raises(ValueError, match="no conditions"):
            other.sample([])


def test_average_treatment_effect_of_the_control_itself_is_zero(model):
    ate = model.average_treatment_effect(["control", "P0"], n_cells=5)
    assert list(ate.index) == ["control", "P0"]
    assert np.allclose(ate.loc["control"].to_numpy(), 0.0)


# ----------------------------------------------------------------- training settings
@pytest.mark.parametrize(
    "settings, error, match",
    [
        ({"grad_clip": -1.0}, ValueError, "grad_clip"),  # would flip the gradient's sign
        ({"lr": float("nan")}, ValueError, "lr"),
        ({"lr": float("inf")}, ValueError, "lr"),
        ({"weight_decay": float("nan")}, ValueError, "weight_decay"),
        ({"min_delta": float("nan")}, ValueError, "min_delta"),
        ({"seed": -1}, ValueError, "seed"),
    ],
)
def test_train_settings_are_checked(model, settings, error, match):
    with pytest.raises(error, match=match):
        model.train(max_steps=1, **{**COMMON, **settings})


def test_resume_must_be_a_bool(model, tmp_path):
    with pytest.raises(TypeError, match="resume must be True or False"):
        model.train(max_steps=1, checkpoint_dir=tmp_path, resume="yes", **COMMON)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m, a: SAMSVAE(np.ones((3, 3))), TypeError, "AnnData"),
        (lambda m, a: SAMSVAE(a, seed=-1), ValueError, "seed"),
        (lambda m, a: m.get_latent_representation(np.ones((3, 3))), TypeError, "AnnData"),
        (lambda m, a: m.get_perturbation_effects(n_draws=2, seed=-1), ValueError, "seed"),
        (lambda m, a: m.iwelbo(a, n_particles=2, seed=-1), ValueError, "seed"),
    ],
)
def test_model_arguments_are_checked(model, screen, call, error, match):
    with pytest.raises(error, match=match):
        call(model, screen)


def test_evaluation_functions_check_their_arguments(model, screen, saved):
    from bioreason.models import evaluation

    with pytest.raises(ValueError, match=r"posterior_predictive_check\(model, adata\)"):
        evaluation.posterior_predictive_check(SAMSVAE.load(saved))
    with pytest.raises(ValueError, match="same shape"):
        evaluation.mask_recovery(np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 3)), np.ones((3, 3)))
    result = evaluation.mask_recovery(
        [[1, 0], [0, 1]], [[1.0, 0], [0, 1]], [[0.9, 0.1]] * 2, [[1.0, 0], [0, 1]]
    )
    assert np.isfinite(result["correlation"])
    data = model.data_for(screen)
    with pytest.raises(ValueError, match="n_particles"):
        evaluation.iwelbo(model.module, model._loader(data, 64), model.categories_for(data), 0)
    with pytest.raises(ValueError, match="lr"):
        evaluation.amortization_gap(model, screen[:10].copy(), n_steps=1, lr=-1.0, n_particles=2)
