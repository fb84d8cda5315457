"""The ``data`` stage: a simulated screen (:class:`bioreason.data.ScreenConfig`), an
``.h5ad`` file or a dataset of the registry (``data/datasets.yaml``); a share of the
combinations whose parts were measured alone is held out of the model's training cells.
Writes ``data.h5ad`` and ``split.npz``."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bioreason.pipelines.config import PipelineConfig
from bioreason.pipelines.stages import Stage, say
from bioreason.run_layout import DATA_FILE, SPLIT_FILE
from bioreason.stage import StageResult

__all__ = ["data_stage"]


def data_stage(config: PipelineConfig) -> Stage:
    """The ``data`` stage: simulate a screen or read cells, hold out combinations.

    Returns
    -------
    Stage
    """

    def compute(stage_dir: Path, upstream: Mapping[str, StageResult]) -> dict[str, Any]:
        from bioreason._io import atomic_write
        from bioreason.data import (
            PerturbationData,
            PerturbationSetup,
            composable_combinations,
            simulate_screen,
            split_heldout_combinations,
        )

        start = time.perf_counter()
        data_config = config.data
        if data_config.source == "simulate":
            screen = dataclasses.replace(data_config.screen, seed=config.seed)
            adata = simulate_screen(screen)
            source = "simulated"
        elif data_config.source == "dataset":
            from bioreason.data import load_dataset

            adata = load_dataset(str(data_config.path))
            source = f"dataset {data_config.path}"
        else:
            from bioreason.data import read_h5ad

            path = Path(str(data_config.path)).expanduser()
            if not path.exists():
                raise FileNotFoundError(
                    f"data.path: the .h5ad file {path} (data.source: h5ad) does not exist"
                    f"{'' if path.is_absolute() else f' (relative to {Path.cwd()})'}; give "
                    "the path of an existing file, or data.source: dataset with a registry "
                    "name such as norman19"
                )
            adata = read_h5ad(path, what="data.path")
            source = str(data_config.path)
            if data_config.recover_counts:
                from bioreason.data.recover import recover_into_setup

                adata, recovered = recover_into_setup(
                    adata, PerturbationSetup(), "data.recover_counts"
                )
                say(f"[data] {recovered.summary()}")
        data = PerturbationData.from_anndata(adata)
        table = data.condition_table()
        heldout: list[str] = []
        if data_config.heldout_fraction > 0 and (table["n_perturbations"] >= 2).any():
            heldout = composable_combinations(
                data, fraction=data_config.heldout_fraction, seed=config.seed
            )
        if heldout:
            split = split_heldout_combinations(
                data, heldout=heldout, val_fraction=data_config.val_fraction, seed=config.seed
            )
        else:  # nothing to hold out: every cell trains or validates
            from bioreason.data import split_random

            split = split_random(data, val_fraction=data_config.val_fraction, seed=config.seed)
        atomic_write(stage_dir / DATA_FILE, lambda tmp: adata.write_h5ad(tmp))

        def write_split(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, train=split.train, val=split.val, test=split.test)

        atomic_write(stage_dir / SPLIT_FILE, write_split)
        result = {
            "source": source,
            "n_cells": int(adata.n_obs),
            "n_genes": int(adata.n_vars),
            "n_conditions": int(len(table)),
            "n_perturbations": int(len(data.perturbation_names)),
            "n_combinations": int((table["n_perturbations"] >= 2).sum()),
            "heldout_conditions": list(split.heldout_conditions),
            "n_train": int(split.train.size),
            "n_val": int(split.val.size),
            "n_test": int(split.test.size),
            "ground_truth": "ground_truth" in adata.uns,
            "seconds": time.perf_counter() - start,
        }
        say(
            f"[data] {result['n_cells']} cells x {result['n_genes']} genes, "
            f"{result['n_conditions']} conditions; held out {len(heldout)} combinations"
        )
        return result

    return Stage(
        "data",
        compute,
        config={"data": config.data, "seed": config.seed},
        seed=config.seed,
        outputs=[DATA_FILE, SPLIT_FILE],
    )
