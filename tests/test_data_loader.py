import anndata as ad
import numpy as np
import pytest
import torch

from bioreason.data import MinibatchLoader, PerturbationData


@pytest.fixture(scope="module")
def data(small_screen):
    return PerturbationData.from_anndata(small_screen)


def test_epoch_covers_each_cell_once_with_matching_content(data, small_screen):
    indices = np.arange(0, data.n_cells, 3)
    loader = MinibatchLoader(data, indices, batch_size=64, seed=0)
    seen = []
    for batch in loader:
        rows = batch.index.numpy()
        seen.append(rows)
        assert batch.counts.dtype == torch.float32 and batch.counts.shape == (rows.size, 200)
        np.testing.assert_array_equal(
            batch.counts.numpy(), small_screen.layers["counts"][rows].toarray()
        )
        np.testing.assert_array_equal(batch.dosage.numpy(), data.dosage[rows].toarray())
        np.testing.assert_allclose(batch.library_size.numpy(), batch.counts.sum(1).numpy())
    seen = np.concatenate(seen)
    assert len(loader) == -(-indices.size // 64)
    np.testing.assert_array_equal(np.sort(seen), indices)


def test_shuffling_is_seeded_and_changes_per_epoch(data):
    def orders(seed):
        loader = MinibatchLoader(data, batch_size=100, seed=seed)
        return [np.concatenate([b.index.numpy() for b in loader]) for _ in range(2)]

    first, second = orders(0)
    assert not np.array_equal(first, second)
    again = orders(0)
    np.testing.assert_array_equal(first, again[0])
    np.testing.assert_array_equal(second, again[1])
    unshuffled = MinibatchLoader(data, batch_size=100, shuffle=False)
    np.testing.assert_array_equal(
        np.concatenate([b.index.numpy() for b in unshuffled]), np.arange(data.n_cells)
    )


def test_drop_last_and_errors(data):
    loader = MinibatchLoader(data, np.arange(250), batch_size=100, drop_last=True)
    assert len(loader) == 2 and [b.counts.shape[0] for b in loader] == [100, 100]
    with pytest.raises(ValueError, match="batch_size must be positive"):
        MinibatchLoader(data, batch_size=0)
    with pytest.raises(ValueError, match="indices must lie in"):
        MinibatchLoader(data, [data.n_cells])
    with pytest.raises(ValueError, match="CUDA is not available|no cells"):
        MinibatchLoader(
            data,
            device="cuda" if not torch.cuda.is_available() else "cpu",
            indices=[] if torch.cuda.is_available() else None,
        )


def test_backed_loader_matches_memory(small_screen, tmp_path):
    path = tmp_path / "screen.h5ad"
    small_screen.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    on_disk = PerturbationData.from_anndata(backed, layer=None)
    in_memory = PerturbationData.from_anndata(small_screen)
    for a, b in zip(
        MinibatchLoader(on_disk, batch_size=128, seed=5),
        MinibatchLoader(in_memory, batch_size=128, seed=5),
    ):
        torch.testing.assert_close(a.counts, b.counts)
        torch.testing.assert_close(a.index, b.index)
    backed.file.close()
