"""Real data: the Norman 2019 subset (skipped when ../shared/data is absent)."""

from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "perturbench_devel.h5ad"


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data/perturbench_devel.h5ad not present")
def test_first_steps_on_norman_are_finite_despite_all_zero_genes():
    import anndata as ad

    from bioreason.data import recover_counts
    from bioreason.models import SAMSVAE

    full = ad.read_h5ad(SHARED)
    adata, _ = recover_counts(full[full.obs["dataset"] == "norman19"].copy())
    counts = adata.layers["counts"]
    assert (np.asarray(counts.sum(axis=0)).ravel() == 0).sum() == 250
    SAMSVAE.setup_anndata(adata, perturbation_key="condition")
    model = SAMSVAE(adata, n_latent=10, n_hidden=64)
    history = model.train(max_steps=3, batch_size=256, progress=False, device="cpu")
    assert np.isfinite(history["train_loss"]).all()
    assert np.isfinite(model.get_latent_representation()).all()
