import anndata as ad
import numpy as np
import pandas as pd
import pytest

from bioreason.data import PerturbationData, PerturbationSetup, dataset_registry, load_dataset


def write_registry(tmp_path, body: str):
    path = tmp_path / "datasets.yaml"
    path.write_text(body)
    return path


def test_entries_carry_a_perturbation_setup(tmp_path):
    counts = np.array([[1, 2], [3, 0], [0, 5]], dtype=np.float32)
    adata = ad.AnnData(
        X=counts,
        obs=pd.DataFrame(
            {"guide": ["nt", "A", "A_B"], "batch": ["x", "x", "y"]}, index=list("abc")
        ),
    )
    adata.write_h5ad(tmp_path / "toy.h5ad")
    registry = write_registry(
        tmp_path,
        f"""
toy:
  path: {tmp_path / "toy.h5ad"}
  setup: {{perturbation_key: guide, control: [nt], layer: null, delimiter: _}}
legacy:
  path: {tmp_path / "toy.h5ad"}
  obs_filter: {{batch: x}}
  perturbation_key: guide
  control: nt
  delimiter: _
  layer: null
""",
    )
    entries = dataset_registry(registry)
    assert entries["toy"].setup == PerturbationSetup(
        perturbation_key="guide", control=["nt"], layer=None, delimiter="_"
    )
    assert entries["legacy"].setup == PerturbationSetup(
        perturbation_key="guide", control="nt", layer=None, delimiter="_"
    )
    assert entries["legacy"].recover_counts is False and entries["legacy"].library_key is None
    adata = load_dataset("toy", registry=registry)
    data = PerturbationData.from_anndata(adata, entries["toy"].setup)
    np.testing.assert_array_equal(data.dosage.toarray(), [[0, 0], [1, 0], [1, 1]])
    assert load_dataset("legacy", registry=registry).n_obs == 2


def test_bad_entries_name_the_field(tmp_path):
    registry = write_registry(tmp_path, "x:\n  path: a.h5ad\n  setup: {controll: nt}\n")
    with pytest.raises(ValueError, match=r"x.setup: unknown field\(s\) \['controll'\]"):
        dataset_registry(registry)
    registry = write_registry(tmp_path, "x:\n  path: a.h5ad\n  control: nt\n  setup: {}\n")
    with pytest.raises(ValueError, match=r"write \['control'\] inside setup:"):
        dataset_registry(registry)


def test_the_repository_registry_parses():
    entries = dataset_registry()
    assert {"norman19", "mcfaline23"} <= set(entries)
    assert entries["norman19"].setup == PerturbationSetup()
    assert entries["norman19"].recover_counts and entries["norman19"].library_key == "ncounts"
    for name in ("path", "description", "obs_filter", "setup", "recover_counts", "library_key"):
        assert f"{name} : " in type(entries["norman19"]).__doc__
