"""bioreason.rl.lm.fast: the lean Llama forward equals transformers' forward (logits,
hidden states, caches, samples, gradients) and is used only for the exact architecture."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bioreason.rl.lm.fast import FastLlama, fast_forward
from bioreason.rl.lm.rollout import (
    _Caller,
    answer_distribution_at,
    left_pad,
    sample_group_completions,
    teacher_forced,
)

CPU = torch.device("cpu")


def _model(seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    fields = dict(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    fields.update(overrides)
    model = LlamaForCausalLM(LlamaConfig(**fields)).eval()
    with torch.no_grad():  # away from the tiny init, so that differences would show
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return model


def _prompts():
    return left_pad([[1, 5, 8, 9, 10], [1, 6, 7], [1, 4, 4, 4, 4, 4, 9]], 0, CPU)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_prefill_and_decode_equal_the_model_forward(kv_heads):
    model = _model(num_key_value_heads=kv_heads)
    assert fast_forward(model) is not None
    prompts = _prompts()
    outputs = {}
    for fast in (False, True):
        call = _Caller(model, fast)
        head = call(
            prompts.input_ids,
            attention_mask=prompts.attention_mask,
            position_ids=prompts.position_ids(),
            hidden=True,
        )
        cache = _Caller.cache_of(head)
        cache.batch_repeat_interleave(2)
        attention = prompts.attention_mask.repeat_interleave(2, 0)
        position = prompts.lengths.repeat_interleave(2)[:, None]
        steps = []
        for t in range(3):
            attention = torch.cat([attention, attention.new_ones(6, 1)], 1)
            out = call(
                torch.full((6, 1), 10 + t),
                attention_mask=attention,
                position_ids=position,
                cache=cache,
                hidden=True,
            )
            position = position + 1
            steps.append((out.logits, out.hidden_states[-1]))
        outputs[fast] = (head.logits, head.hidden_states[-1], steps, cache.get_seq_length())
    valid = prompts.attention_mask.bool()
    slow, quick = outputs[False], outputs[True]
    torch.testing.assert_close(quick[0][valid], slow[0][valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(quick[1][valid], slow[1][valid], atol=1e-5, rtol=1e-5)
    for (a_logits, a_hidden), (b_logits, b_hidden) in zip(quick[2], slow[2]):
        torch.testing.assert_close(a_logits, b_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a_hidden, b_hidden, atol=1e-5, rtol=1e-5)
    assert quick[3] == slow[3] == prompts.input_ids.shape[1] + 3


def test_unpadded_prefill_and_continuation_with_cache_equal_the_model_forward():
    model = _model(1)
    ids = torch.randint(3, 40, (3, 6), generator=torch.Generator().manual_seed(0))
    results = []
    for fast in (False, True):
        call = _Caller(model, fast)
        head = call(ids[:, :4])
        rest = call(ids[:, 4:], cache=_Caller.cache_of(head))  # two tokens after a cache
        results.append(torch.cat([head.logits, rest.logits], 1))
    torch.testing.assert_close(results[1], results[0], atol=1e-5, rtol=1e-5)


def test_sampling_gives_the_same_tokens_log_probs_and_gradients():
    model = _model(2)
    prompts = _prompts()
    results = []
    for fast in (False, True):
        model.zero_grad()
        rollout = sample_group_completions(
            model,
            prompts,
            4,
            max_new_tokens=5,
            stop_ids=[2],
            generator=torch.Generator().manual_seed(3),
            with_grad=True,
            hidden=True,
            fast=fast,
        )
        (rollout.log_probs.sum() + rollout.entropy.sum() + rollout.hidden.sum()).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        results.append((rollout, grads))
    (slow, slow_grads), (quick, quick_grads) = results
    assert torch.equal(quick.tokens, slow.tokens) and torch.equal(quick.mask, slow.mask)
    torch.testing.assert_close(quick.log_probs, slow.log_probs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(quick.hidden, slow.hidden, atol=1e-5, rtol=1e-5)
    for a, b in zip(quick_grads, slow_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_teacher_forced_and_answer_distribution_equal_the_model_forward():
    model = _model(3)
    prompts = _prompts()
    rollout = sample_group_completions(
        model, prompts, 3, max_new_tokens=4, generator=torch.Generator().manual_seed(0)
    )
    forced = [
        teacher_forced(model, prompts, rollout.tokens, rollout.mask, hidden=True, fast=fast)
        for fast in (False, True)
    ]
    torch.testing.assert_close(forced[1].log_probs, forced[0].log_probs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(forced[1].hidden, forced[0].hidden, atol=1e-5, rtol=1e-5)
    # the sampling pass recorded the same log-probabilities
    torch.testing.assert_close(forced[1].log_probs, rollout.log_probs, atol=1e-5, rtol=1e-5)
    answers = torch.tensor([5, 6, 7])
    dist = [answer_distribution_at(model, prompts, answers, fast=fast) for fast in (False, True)]
    torch.testing.assert_close(dist[1], dist[0], atol=1e-6, rtol=1e-5)


def test_other_architectures_take_the_model_forward():
    assert fast_forward(_model(mlp_bias=True)) is None
    assert fast_forward(_model(attention_bias=True)) is None
    assert fast_forward(_model(hidden_act="gelu")) is None

    class Custom(LlamaForCausalLM):
        pass

    torch.manual_seed(0)
    assert fast_forward(Custom(_model().config)) is None
    dropout = _model(attention_dropout=0.1)
    assert fast_forward(dropout) is not None  # eval mode: no dropout
    assert fast_forward(dropout.train()) is None
    assert _Caller(_model(), fast=False).fast is None
    assert isinstance(_Caller(_model()).fast, FastLlama)


def test_lora_wrapped_model_takes_the_model_forward():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        _model(), peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], lora_alpha=4)
    )
    assert fast_forward(model) is None
    assert fast_forward(model.base_model.model) is None  # its q_proj is a LoRA layer
