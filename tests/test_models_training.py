"""Training loop: loss goes down, determinism, checkpoints and resume, NaN errors."""

import numpy as np
import pytest
import torch
from _models_util import tiny_screen

from bioreason.models import CPAVAE, SAMSVAE, TrainConfig, TrainingDivergedError


def make(adata, cls=SAMSVAE, **kwargs):
    cls.setup_anndata(adata)
    return cls(adata, n_latent=3, n_hidden=16, **kwargs)


def params(model):
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


def test_short_training_lowers_the_loss():
    model = make(tiny_screen())
    history = model.train(max_steps=80, batch_size=64, lr=3e-3, progress=False, device="cpu")
    first, last = history["train_loss"].iloc[:10].mean(), history["train_loss"].iloc[-10:].mean()
    assert last < first - 5.0  # nats per cell
    assert history["validation_loss"].notna().any()


def test_training_is_deterministic_on_cpu_for_a_seed():
    adata = tiny_screen()
    runs = []
    for _ in range(2):
        model = make(adata.copy())
        model.train(max_steps=6, batch_size=32, progress=False, device="cpu", seed=11)
        runs.append((params(model), model.history["train_loss"].to_numpy()))
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    for key in runs[0][0]:
        assert torch.equal(runs[0][0][key], runs[1][0][key]), key
    other = make(adata.copy())
    other.train(max_steps=6, batch_size=32, progress=False, device="cpu", seed=12)
    assert not np.array_equal(other.history["train_loss"].to_numpy(), runs[0][1])


@pytest.mark.parametrize("engine", ["module", "svi"])
def test_resume_from_a_checkpoint_continues_exactly(tmp_path, engine):
    adata = tiny_screen()
    common = dict(
        batch_size=64,
        progress=False,
        device="cpu",
        seed=3,
        engine=engine,
        early_stopping=False,
        eval_every=4,
    )
    straight = make(adata.copy())
    straight.train(max_steps=10, **common)
    # 7 steps with a checkpoint every 3 steps: the last checkpoint is at step 6, mid-epoch
    first = make(adata.copy())
    first.train(max_steps=7, checkpoint_dir=tmp_path, checkpoint_every=3, **common)
    resumed = make(adata.copy())
    resumed.train(max_steps=10, checkpoint_dir=tmp_path, checkpoint_every=3, resume=True, **common)
    np.testing.assert_allclose(
        resumed.history["train_loss"].to_numpy(),
        straight.history["train_loss"].to_numpy(),
        rtol=1e-6,
    )
    for key, value in params(straight).items():
        torch.testing.assert_close(params(resumed)[key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_first_nonfinite_loss_stops_with_a_clear_error():
    model = make(tiny_screen())
    with torch.no_grad():
        model.module.gene_parameter[3] = float("nan")
    with pytest.raises(
        TrainingDivergedError, match=r"at step 1 .*parameter:gene_parameter.*lower learning rate"
    ):
        model.train(max_steps=5, batch_size=32, progress=False, device="cpu")


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_nan_diagnosis_names_the_likelihood_term():
    model = make(tiny_screen())
    with torch.no_grad():
        model.module.decoder.output.bias[0] = float("inf")
    with pytest.raises(TrainingDivergedError, match="model:counts"):
        model.train(max_steps=5, batch_size=32, progress=False, device="cpu")


def test_early_stopping_restores_the_best_validation_parameters():
    model = make(tiny_screen(), cls=CPAVAE)
    # a learning rate far too high makes the validation loss worse after the start
    history = model.train(
        max_steps=60,
        batch_size=64,
        lr=0.5,
        progress=False,
        device="cpu",
        eval_every=2,
        patience=3,
        grad_clip=None,
        early_stopping=True,
    )
    evaluated = history.dropna(subset=["validation_loss"])
    assert len(history) < 60  # stopped early
    best = evaluated["validation_loss"].min()
    assert (evaluated["validation_loss"].iloc[-3:] >= best).all()


def test_train_config_validates_fields():
    with pytest.raises(ValueError, match="engine must be one of"):
        TrainConfig(engine="jit")
    with pytest.raises(TypeError, match="TrainConfig.lr must be a number"):
        TrainConfig.from_dict({"lr": "fast"})
    with pytest.raises(ValueError, match="n_particles must be positive"):
        TrainConfig(n_particles=0)


def test_mask_logits_get_their_own_learning_rate():
    from bioreason.models.training import ENGINES

    model = make(tiny_screen())
    config = TrainConfig(mask_lr=0.05, lr=1e-3)
    engine = ENGINES["module"](model.module, config)
    groups = engine.optimizer.param_groups
    assert [g["lr"] for g in groups] == [1e-3, 0.05]
    assert groups[1]["params"] == [model.module.mask_logits]
    before = model.module.mask_logits.detach().clone()
    batch = next(iter(model._loader(model.data_for(None), 64)))
    from bioreason.models.objectives import batch_arguments

    engine.step(*batch_arguments(batch, model.categories_for(model.data_for(None)), 64))
    # Adam's first step moves every parameter by about its learning rate
    moved = (model.module.mask_logits.detach() - before).abs()
    assert moved.max() == pytest.approx(0.05, rel=0.01)
    with pytest.raises(ValueError, match="mask_lr must be positive"):
        TrainConfig(mask_lr=0.0)


@pytest.mark.parametrize("guide", ["correlated", "mean_field"])
def test_embeddings_get_their_own_learning_rate(guide):
    """embedding_lr moves the per-perturbation parameters of q(E) (the correlated
    guide's one-hot table, the mean-field guide's locations and scales) by about their
    own rate on Adam's first step; the rest keep lr and the masks mask_lr."""
    from bioreason.models.objectives import batch_arguments
    from bioreason.models.training import EMBEDDING_PARAMETERS, ENGINES

    model = make(tiny_screen(), guide=guide)
    config = TrainConfig(mask_lr=0.05, embedding_lr=0.02, lr=1e-3)
    engine = ENGINES["module"](model.module, config)
    groups = engine.optimizer.param_groups
    assert [g["lr"] for g in groups] == [1e-3, 0.05, 0.02]
    named = dict(model.module.named_parameters())
    tables = [p for n, p in named.items() if n.rsplit(".", 1)[-1] in EMBEDDING_PARAMETERS]
    assert tables and groups[2]["params"] == tables
    before = [p.detach().clone() for p in tables]
    data = model.data_for(None)
    engine.step(
        *batch_arguments(next(iter(model._loader(data, 64))), model.categories_for(data), 64)
    )
    moved = max((p.detach() - b).abs().max().item() for p, b in zip(tables, before, strict=True))
    assert moved == pytest.approx(0.02, rel=0.01)
    with pytest.raises(ValueError, match="embedding_lr must be positive"):
        TrainConfig(embedding_lr=-1.0)
    # None: one group at lr besides the masks (the default keeps the earlier optimizer)
    default = ENGINES["module"](model.module, TrainConfig(mask_lr=0.05))
    assert [g["lr"] for g in default.optimizer.param_groups] == [1e-3, 0.05]
