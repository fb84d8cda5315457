"""What lets the LM answer question by question: the prompt-spread diagnostic, a warm start
that keeps the prompt, RL that trains only the embeddings, prompts that end with
``<answer>``, and the scheduled KL weight / entropy bonus / learning rate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_lm_trainer import make_model, make_task, make_tokenizer

from bioreason.lm import answer_position_spread, prompt_spread, warm_start
from bioreason.rl import LMRLConfig, LMTrainer
from bioreason.rl.lm.config import coefficients_at


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def test_prompt_spread_by_hand():
    same = torch.ones(5, 3) * 2.0
    assert prompt_spread(same) == 0.0
    hidden = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # centred: all of the size varies
    assert prompt_spread(hidden) == pytest.approx(1.0)
    hidden = torch.tensor([[3.0, 1.0], [1.0, 1.0]])
    # variance per dimension (1, 0) -> mean 0.5; mean square (5, 1) -> mean 3
    assert prompt_spread(hidden) == pytest.approx(math.sqrt(0.5) / math.sqrt(3.0))
    assert math.isnan(prompt_spread(torch.ones(1, 4)))
    with pytest.raises(ValueError, match="n_prompts, hidden_size"):
        prompt_spread(torch.ones(4))


def _prompts() -> list[str]:
    return [f"perturb PERT{i} readout GENE{j} probability ?" for i in range(6) for j in range(4)]


def test_a_warm_start_of_the_answer_rows_keeps_the_prompt_and_the_rest_of_the_model(tokenizer):
    prompts = [f"{p} <answer>" for p in _prompts()]
    whole, rows = make_model(tokenizer, seed=1), make_model(tokenizer, seed=1)
    before = answer_position_spread(rows, tokenizer, prompts)
    trunk = {k: v.clone() for k, v in rows.state_dict().items() if "embed" not in k}
    trunk.pop("lm_head.weight", None)
    embeddings = rows.get_input_embeddings().weight.detach().clone()
    warm_start(rows, tokenizer, prompts, steps=40, lr=1e-2, seed=0, trainable="answer_rows")
    warm_start(whole, tokenizer, prompts, steps=40, lr=1e-2, seed=0, trainable="all")
    # only the rows of the tokens the model writes moved; the trunk did not
    for name, value in trunk.items():
        assert torch.equal(rows.state_dict()[name], value), name
    changed = (rows.get_input_embeddings().weight.detach() != embeddings).any(1)
    written = {tokenizer.eos_token_id}  # and each target's tokens, as this tokenizer writes them
    for n in range(1, 100):
        written |= set(tokenizer.encode(f"{n}</answer>", add_special_tokens=False))
    written |= {tokenizer.convert_tokens_to_ids(str(n)) for n in range(1, 100)}
    assert set(torch.nonzero(changed).flatten().tolist()) <= written
    assert changed.any()
    assert all(p.requires_grad for p in rows.parameters())  # restored
    # the state at the answer position keeps the prompt (the same trunk and prompt tokens)
    after_rows = answer_position_spread(rows, tokenizer, prompts)
    after_whole = answer_position_spread(whole, tokenizer, prompts)
    assert after_rows == pytest.approx(before, rel=1e-6)
    assert after_whole < 0.5 * before  # training everything on one target forgets the prompt
    with pytest.raises(ValueError, match="trainable must be one of"):
        warm_start(rows, tokenizer, prompts, steps=1, trainable="trunk")


def _config(**options) -> LMRLConfig:
    values = {
        "method": "rloo",
        "steps": 3,
        "group_size": 4,
        "questions_per_step": 4,
        "lr": 1e-3,
        "checkpoint_every": 3,
        "log_every": 1,
        "max_new_tokens": 3,
        "eval_split": "val",
        "eval_samples": 2,
        "device": "cpu",
        "tensorboard": False,
    }
    values.update(options)
    return LMRLConfig(**values)


def test_open_answer_prompts_end_with_the_prefix_and_answers_are_read_with_it(tokenizer):
    model = make_model(tokenizer)
    config = _config(open_answer=True)
    trainer = LMTrainer(model, tokenizer, make_task(), config)
    answer = tokenizer.convert_tokens_to_ids("<answer>")
    assert all(ids[-1] == answer for ids in trainer._prompt_ids)
    assert trainer._prefix_ids == []  # q_exact is read right after the prompt
    tokens = torch.tensor([[tokenizer.convert_tokens_to_ids("37"), 5]])
    assert trainer._decode(tokens, torch.tensor([[True, True]]))[0].startswith("<answer>37")
    frame = trainer.predict("val", n_samples=2)
    assert np.isfinite(frame["q_exact"]).all()
    with pytest.raises(ValueError, match="answer_prefix"):
        _config(open_answer=True, answer_prefix="")


def test_trainable_embeddings_trains_only_the_token_embeddings(tokenizer):
    model = make_model(tokenizer)
    trunk = {k: v.clone() for k, v in model.state_dict().items() if "embed" not in k}
    trunk.pop("lm_head.weight", None)
    embeddings = model.get_input_embeddings().weight.detach().clone()
    trainer = LMTrainer(model, tokenizer, make_task(), _config(trainable="embeddings"))
    for _ in range(3):
        trainer.train_step()
    for name, value in trunk.items():
        assert torch.equal(model.state_dict()[name], value), name
    assert not torch.equal(model.get_input_embeddings().weight.detach(), embeddings)
    with pytest.raises(ValueError, match="trainable must be one of"):
        _config(trainable="blocks")


def test_the_scheduled_coefficients_reach_each_step(tokenizer):
    config = _config(
        steps=4,
        kl_coef=0.1,
        kl_coef_end=0.001,
        kl_schedule="exponential",
        lr_end=1e-4,
        lr_schedule="linear",
        lr_warmup_steps=2,
        entropy_coef=0.01,
        entropy_coef_end=0.0,
        entropy_schedule="linear",
    )
    trainer = LMTrainer(make_model(tokenizer), tokenizer, make_task(), config)
    assert trainer.reference is not None  # a KL weight above 0 at some step needs it
    for step in range(4):
        trainer.train_step()
        expected = coefficients_at(config, step)
        figures = trainer.diagnostics()
        for name in ("kl_coef", "entropy_coef", "lr"):
            assert figures[name] == pytest.approx(expected[name]), (step, name)
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(expected["lr"])
    assert coefficients_at(config, 0)["lr"] == pytest.approx(1e-3 / 2)  # warm-up
    assert coefficients_at(config, 2)["kl_coef"] == pytest.approx(0.01)  # geometric middle
