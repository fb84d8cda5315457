"""The demo run behind ``make demo``: what the project can do end to end so far."""

from __future__ import annotations

import time
from pathlib import Path

from bioreason._io import atomic_write, manifest_matches, write_manifest

DEMO_SCREEN = {
    "n_cells_per_condition": 100,
    "n_genes": 500,
    "n_perturbations": 20,
    "n_combinations": 12,
}


def run_demo(out: Path, seed: int = 0) -> None:
    """Simulate a screen, parse it, split it, stream minibatches; print a summary."""
    import anndata as ad

    from bioreason.data import (
        MinibatchLoader,
        PerturbationData,
        ScreenConfig,
        simulate_screen,
        split_heldout_combinations,
    )

    stage = out / "screen"
    screen_path = stage / "screen.h5ad"
    config = ScreenConfig.from_dict({**DEMO_SCREEN, "seed": seed})
    if screen_path.exists() and manifest_matches(stage, config=config.to_dict(), seed=seed):
        print(f"[screen] up to date: {screen_path}")
        adata = ad.read_h5ad(screen_path)
    else:
        start = time.perf_counter()
        adata = simulate_screen(config)
        atomic_write(screen_path, lambda tmp: adata.write_h5ad(tmp))
        write_manifest(stage, config=config.to_dict(), seed=seed)
        print(f"[screen] simulated in {time.perf_counter() - start:.1f} s -> {screen_path}")

    data = PerturbationData.from_anndata(adata)
    print(data.summary())
    split = split_heldout_combinations(data, fraction=0.25, seed=seed)
    print(
        f"split (25% of combinations held out): train {split.train.size}, "
        f"val {split.val.size}, test {split.test.size} cells; "
        f"held out: {', '.join(split.heldout_conditions)}"
    )
    loader = MinibatchLoader(data, split.train, batch_size=512, seed=seed)
    start = time.perf_counter()
    n_cells = sum(batch.counts.shape[0] for batch in loader)
    rate = n_cells / (time.perf_counter() - start)
    print(
        f"minibatch loader: {n_cells} training cells in {len(loader)} batches ({rate:,.0f} cells/s)"
    )
