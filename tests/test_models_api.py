"""The scvi-style user API: setup, train, latents, effects, sampling, save/load, errors."""

import numpy as np
import pandas as pd
import pytest
import torch
from _models_util import tiny_screen

from bioreason.models import CPAVAE, MODELS, SAMSVAE, ConditionalVAE, SVAEPlus, VAEConfig

ALL = [SAMSVAE, CPAVAE, ConditionalVAE, SVAEPlus]


@pytest.fixture(scope="module")
def screen():
    return tiny_screen()


def fitted(cls, adata, steps=15, **kwargs):
    cls.setup_anndata(adata)
    model = cls(adata, n_latent=3, n_hidden=16, **kwargs)
    model.train(max_steps=steps, batch_size=64, progress=False, device="cpu", eval_every=5)
    return model


def test_registry_names_every_model():
    assert MODELS == {
        "sams_vae": SAMSVAE,
        "cpa_vae": CPAVAE,
        "conditional_vae": ConditionalVAE,
        "svae_plus": SVAEPlus,
    }


@pytest.mark.parametrize("cls", ALL)
def test_api_outputs_have_documented_shapes(cls, screen):
    adata = screen.copy()
    model = fitted(cls, adata)
    assert list(model.history.columns) == ["step", "epoch", "train_loss", "validation_loss"]
    assert len(model.history) == 15 and model.history["validation_loss"].notna().sum() == 3
    for kind in ("basal", "perturbed"):
        z = model.get_latent_representation(adata, kind=kind)
        assert z.shape == (adata.n_obs, 3) and np.isfinite(z).all()
    effects = model.get_perturbation_effects()
    for frame in effects.values():
        assert isinstance(frame, pd.DataFrame) and frame.notna().all().all()
    index = model.categories or model.perturbation_names
    assert list(next(iter(effects.values())).index) == index
    conditions = ["control", "P0", "P0+P1"] if cls.composes else ["control", "P0"]
    generated = model.sample(conditions, n_cells=7, library_size=500.0)
    assert generated.shape == (7 * len(conditions), adata.n_vars)
    assert list(generated.obs["perturbation"].value_counts().sort_index()) == [7] * len(conditions)
    x = generated.layers["counts"].toarray()
    assert (x >= 0).all() and np.array_equal(x, np.round(x))
    value = model.iwelbo(adata, n_particles=4)
    assert np.isfinite(value) and value < 0
    ate = model.average_treatment_effect(["P0"], n_cells=20)
    assert ate.shape == (1, adata.n_vars) and list(ate.index) == ["P0"]


def test_sams_vae_generates_unseen_combinations_and_svae_plus_refuses(screen):
    adata = screen.copy()
    seen = set(adata.obs["perturbation"].astype(str))
    unseen = next(
        f"P{a}+P{b}" for a in range(5) for b in range(a + 1, 5) if f"P{a}+P{b}" not in seen
    )
    sams = fitted(SAMSVAE, adata, steps=2)
    assert sams.sample([unseen], n_cells=3).n_obs == 3
    svae = fitted(SVAEPlus, adata, steps=2)
    with pytest.raises(ValueError, match="cannot compose unseen combinations"):
        svae.sample([unseen], n_cells=3)
    with pytest.raises(ValueError, match=unseen.replace("+", r"\+")):
        svae.average_treatment_effect([unseen], n_cells=3)


def test_save_load_round_trip_gives_identical_outputs(screen, tmp_path):
    adata = screen.copy()
    model = fitted(SAMSVAE, adata, steps=5)
    model.save(tmp_path / "sams")
    loaded = SAMSVAE.load(tmp_path / "sams", adata=adata)
    assert loaded.config == model.config
    np.testing.assert_array_equal(
        loaded.get_latent_representation(adata, kind="perturbed"),
        model.get_latent_representation(adata, kind="perturbed"),
    )
    assert loaded.iwelbo(adata, n_particles=5, seed=3) == model.iwelbo(adata, n_particles=5, seed=3)
    a = model.sample(["P1", "P0+P2"], n_cells=5, seed=7).X.toarray()
    b = loaded.sample(["P1", "P0+P2"], n_cells=5, seed=7).X.toarray()
    np.testing.assert_array_equal(a, b)
    pd.testing.assert_frame_equal(loaded.history, model.history, check_dtype=False)
    # loading without an AnnData still generates; adata-dependent calls then ask for one
    bare = SAMSVAE.load(tmp_path / "sams")
    np.testing.assert_array_equal(bare.sample(["P1", "P0+P2"], n_cells=5, seed=7).X.toarray(), a)
    with pytest.raises(ValueError, match=r"get_latent_representation\(adata="):
        bare.get_latent_representation()


def test_a_model_saved_before_basal_guide_existed_loads_with_the_direct_guide(screen, tmp_path):
    import yaml

    adata = screen.copy()
    model = fitted(SAMSVAE, adata, steps=3, basal_guide="direct")
    model.save(tmp_path / "old")
    path = tmp_path / "old" / "config.yaml"
    values = yaml.safe_load(path.read_text())
    assert values.pop("basal_guide") == "direct"
    path.write_text(yaml.safe_dump(values))  # what an older version wrote
    loaded = SAMSVAE.load(tmp_path / "old", adata=adata)
    assert loaded.config.basal_guide == "direct"
    np.testing.assert_array_equal(
        loaded.get_latent_representation(adata, kind="basal"),
        model.get_latent_representation(adata, kind="basal"),
    )
    assert SAMSVAE(adata).config.basal_guide == "residual"  # a new model's default


def test_save_never_overwrites_and_load_checks_the_class(screen, tmp_path):
    adata = screen.copy()
    model = fitted(CPAVAE, adata, steps=1)
    model.save(tmp_path / "m")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(tmp_path / "m")
    model.save(tmp_path / "m", overwrite=True)
    with pytest.raises(ValueError, match="holds a CPAVAE, not a SAMSVAE"):
        SAMSVAE.load(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="not a saved model folder"):
        SAMSVAE.load(tmp_path / "missing")


def test_load_names_gene_and_perturbation_differences(screen, tmp_path):
    adata = screen.copy()
    model = fitted(SAMSVAE, adata, steps=1)
    model.save(tmp_path / "m")
    fewer_genes = adata[:, 2:].copy()
    with pytest.raises(
        ValueError, match=r"2 genes missing from adata \(e.g. \['gene00000', 'gene00001'\]\)"
    ):
        SAMSVAE.load(tmp_path / "m", adata=fewer_genes)
    renamed = adata.copy()
    renamed.var_names = [f"other{i}" for i in range(renamed.n_vars)]
    with pytest.raises(ValueError, match="genes not known to the model"):
        SAMSVAE.load(tmp_path / "m", adata=renamed)
    new_perturbation = adata.copy()
    labels = new_perturbation.obs["perturbation"].astype(str).to_numpy()
    labels[:3] = "NEWGENE"
    new_perturbation.obs["perturbation"] = labels
    with pytest.raises(ValueError, match="not trained on.*NEWGENE"):
        SAMSVAE.load(tmp_path / "m", adata=new_perturbation)
    # a subset of the known perturbations is fine (e.g. a test split)
    subset = adata[adata.obs["perturbation"].isin(["control", "P1"])].copy()
    assert (
        SAMSVAE.load(tmp_path / "m", adata=subset).get_latent_representation(subset).shape[0]
        == subset.n_obs
    )


def test_errors_speak_to_the_user(screen):
    adata = screen.copy()
    with pytest.raises(ValueError, match="setup_anndata"):
        SAMSVAE(adata)
    with pytest.raises(ValueError, match="perturbation column 'nope'"):
        SAMSVAE.setup_anndata(adata, perturbation_key="nope")
    SAMSVAE.setup_anndata(adata)
    with pytest.raises(TypeError, match="VAEConfig.likelihood"):
        SAMSVAE(adata, likelihood="gaussian")
    with pytest.raises(ValueError, match="unknown field"):
        SAMSVAE(adata, n_hiden=3)
    with pytest.raises(ValueError, match="mask_prior_probability"):
        VAEConfig(mask_prior_probability=0.0)
    model = SAMSVAE(adata, n_latent=3, n_hidden=8)
    with pytest.raises(ValueError, match="kind must be"):
        model.get_latent_representation(kind="both")
    with pytest.raises(ValueError, match="not among the 5 known perturbations"):
        model.sample(["XYZ"], n_cells=2)
    with pytest.raises(ValueError, match="n_cells must be positive"):
        model.sample(["P0"], n_cells=0)
    with pytest.raises(ValueError, match="batch_size must be positive"):
        model.train(max_steps=1, batch_size=0)
    with pytest.raises(ValueError, match="needs a checkpoint directory"):
        model.train(max_steps=1, checkpoint_every=1, progress=False)


@pytest.mark.parametrize("likelihood", ["poisson", "lognormal"])
def test_other_likelihoods_train_and_sample(screen, likelihood):
    adata = screen.copy()
    model = fitted(SAMSVAE, adata, steps=3, likelihood=likelihood)
    assert np.isfinite(model.history["train_loss"]).all()
    x = model.sample(["P0"], n_cells=4).X.toarray()
    assert (x >= 0).all()


def test_backed_anndata_trains_from_disk(screen, tmp_path):
    import anndata as ad

    path = tmp_path / "screen.h5ad"
    screen.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    SAMSVAE.setup_anndata(backed, layer=None)
    model = SAMSVAE(backed, n_latent=3, n_hidden=8)
    assert model.data_for(None).is_backed
    history = model.train(max_steps=3, batch_size=32, progress=False, device="cpu")
    assert np.isfinite(history["train_loss"]).all()
    assert model.get_latent_representation().shape == (backed.n_obs, 3)


def test_device_auto_and_cuda_when_present(screen):
    adata = screen.copy()
    model = fitted(SAMSVAE, adata, steps=1)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    model.train(max_steps=1, progress=False, device="auto")
    assert next(model.module.parameters()).device.type == expected


def test_evaluation_leaves_the_callers_random_state_alone(screen):
    adata = screen.copy()
    model = fitted(SAMSVAE, adata, steps=1)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    model.sample(["P0"], n_cells=3, seed=5)
    model.get_perturbation_effects()
    model.get_latent_representation(kind="perturbed")
    model.iwelbo(adata, n_particles=2)
    assert torch.equal(torch.rand(3), expected)
