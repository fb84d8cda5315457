"""TensorBoard scalars beside the CSV log of the shared training loop."""

import sys

import pytest
import torch

from bioreason.rl.outcomes import BernoulliOutcomes
from bioreason.rl.tabular import TabularPolicy, TabularRLConfig, TabularTrainer

GRID = torch.arange(1, 100, dtype=torch.float64) / 100


def _trainer(**options) -> TabularTrainer:
    categories = torch.arange(30) % 3
    p_category = torch.tensor([0.2, 0.5, 0.85], dtype=torch.float64)
    config = TabularRLConfig(method="rloo", group_size=4, steps=6, log_every=2, **options)
    policy = TabularPolicy(3, GRID, torch.zeros(3, 99, dtype=torch.float64))
    return TabularTrainer.from_source(
        policy, categories, BernoulliOutcomes(p_category[categories]), config, outcome_seed=1
    )


def test_log_rows_become_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from test_lm_trainer import make_model, make_task, make_tokenizer

    from bioreason.rl import LMRLConfig, LMTrainer

    tokenizer = make_tokenizer()
    config = LMRLConfig(
        method="rloo",
        steps=2,
        group_size=2,
        questions_per_step=2,
        log_every=1,
        answer_format="first_integer",
        answer_prefix="",
        max_new_tokens=2,
        device="cpu",
        eval_split="val",
    )
    trainer = LMTrainer(make_model(tokenizer), tokenizer, make_task(), config)
    trainer.train(log_path=tmp_path / "log.csv", progress=False)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert {"reward_mean", "grad_norm"} <= set(events.Tags()["scalars"])
    logged = [(event.step, event.value) for event in events.Scalars("reward_mean")]
    assert [step for step, _ in logged] == [1, 2]  # step 0 has no reward (NaN)
    assert logged[-1][1] == pytest.approx(trainer.diagnostics()["reward_mean"], rel=1e-6)
    # the tabular trainer shares the loop: its figures go there too
    _trainer().train(log_path=tmp_path / "tabular" / "log.csv", progress=False)
    events = EventAccumulator(str(tmp_path / "tabular" / "tb"))
    events.Reload()
    assert [event.step for event in events.Scalars("policy_entropy")] == [0, 2, 4, 6]


def test_tensorboard_off_or_missing_writes_csv_only(tmp_path, monkeypatch):
    _trainer(tensorboard=False).train(log_path=tmp_path / "off" / "log.csv", progress=False)
    assert (tmp_path / "off" / "log.csv").exists()
    assert not (tmp_path / "off" / "tb").exists()
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    _trainer().train(log_path=tmp_path / "auto" / "log.csv", progress=False)
    assert (tmp_path / "auto" / "log.csv").exists()
    assert not (tmp_path / "auto" / "tb").exists()
    with pytest.raises(ImportError, match="pip install tensorboard"):
        _trainer(tensorboard=True).train(log_path=tmp_path / "on" / "log.csv", progress=False)
    with pytest.raises(ValueError, match="tensorboard must be"):
        TabularRLConfig(tensorboard="yes")
