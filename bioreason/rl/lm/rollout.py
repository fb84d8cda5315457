"""Grouped rollouts of a causal LM: one prompt encoding per question, G sampled completions.

:func:`sample_group_completions` is the LM trainer's sampling loop, written over the
model's forward with a key/value cache instead of ``generate``:

* each question's prompt is encoded once (a left-padded batch of the questions), and
  its cache is repeated ``group_size`` times (``Cache.batch_repeat_interleave``), so the
  G completions of a question share their prompt's keys and values;
* every sampled token comes with its log-probability under the sampling policy (the
  model's logits divided by the temperature), so the behaviour log-probabilities of an
  importance ratio need no second forward pass;
* with ``with_grad=True`` the loop keeps the autograd graph: the log-probabilities it
  returns are the policy's, with gradients, and an on-policy step needs no training
  forward at all (what :class:`bioreason.rl.LMTrainer` does for one update per rollout).

:func:`teacher_forced` computes the same quantities for given completions (a training
forward over the prompt and the completion, sharing the prompt's cache across the
group, or over full sequences), and :func:`answer_distribution_at` reads the policy's
distribution over single-token answers at the answer position.

Sampling is Gumbel-max on ``log_softmax(logits / temperature)`` with noise from a
``torch.Generator``, so a run is reproducible from the generator's state. Top-p
truncates what is sampled; the recorded log-probabilities are those of the untruncated,
temperature-scaled policy (the distribution the loss differentiates), as in most RL
libraries; with ``top_p < 1`` the samples are slightly off-policy for that reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from bioreason.lm.answer_protocol import answer_token_probabilities
from bioreason.rl.lm.fast import fast_forward
from bioreason.rl.losses import entropy_from_logits

__all__ = [
    "GroupRollout",
    "PromptBatch",
    "answer_distribution_at",
    "completion_forward",
    "left_pad",
    "sample_group_completions",
    "teacher_forced",
]


@dataclasses.dataclass
class PromptBatch:
    """Left-padded prompts of a batch of questions.

    Attributes
    ----------
    input_ids : Tensor of int64, shape (n_questions, prompt_length)
    attention_mask : Tensor of int64, shape (n_questions, prompt_length), or None
        None when no prompt is padded (every prompt has the same length); the model
        then needs neither a mask nor explicit positions, which saves time.
    lengths : Tensor of int64, shape (n_questions,)
        Tokens of each prompt (without padding).
    """

    input_ids: Tensor
    attention_mask: Tensor | None
    lengths: Tensor

    @property
    def n_questions(self) -> int:
        return int(self.input_ids.shape[0])

    def position_ids(self) -> Tensor | None:
        """Positions that skip the left padding, shape (n_questions, prompt_length), or None
        without padding."""
        if self.attention_mask is None:
            return None
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> PromptBatch:
    """Token id lists -> :class:`PromptBatch` (left padding with ``pad_id``)."""
    if not prompts:
        raise ValueError("left_pad: no prompts")
    lengths = [len(ids) for ids in prompts]
    if min(lengths) == 0:
        raise ValueError(f"left_pad: prompt {lengths.index(0)} has no tokens")
    width = max(lengths)
    input_ids = torch.full((len(prompts), width), int(pad_id), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids) :] = torch.as_tensor(list(ids), dtype=torch.long)
    lengths_t = torch.as_tensor(lengths, dtype=torch.long)
    mask = None
    if min(lengths) != width:
        mask = (torch.arange(width)[None, :] >= (width - lengths_t)[:, None]).long().to(device)
    return PromptBatch(input_ids.to(device), mask, lengths_t.to(device))


@dataclasses.dataclass
class GroupRollout:
    """Completions of a batch of questions, ``group_size`` per question (rows
    ``i * group_size .. (i + 1) * group_size - 1`` belong to question ``i``).

    Attributes
    ----------
    tokens : Tensor of int64, shape (n_rollouts, n_tokens)
        Sampled tokens; after a completion stops, the pad id.
    mask : Tensor of bool, shape (n_rollouts, n_tokens)
        Valid tokens (the stop token included).
    log_probs : Tensor of float32, shape (n_rollouts, n_tokens)
        Log-probability of each token under the sampling policy (temperature-scaled,
        untruncated); 0 at padding. With gradients when sampled with ``with_grad``.
    entropy : Tensor of float32, shape (n_rollouts, n_tokens)
        Entropy of the (temperature-scaled) next-token distribution; 0 at padding.
    hidden : Tensor, shape (n_rollouts, n_tokens, hidden_size), or None
        Final hidden state at the position that predicts each token (the input of the
        LM head), when asked for (a value head reads it).
    """

    tokens: Tensor
    mask: Tensor
    log_probs: Tensor
    entropy: Tensor
    hidden: Tensor | None = None

    @property
    def lengths(self) -> Tensor:
        """Valid tokens per completion, shape (n_rollouts,)."""
        return self.mask.sum(1)


@functools.lru_cache(maxsize=32)
def _forward_parameters(forward_type: type) -> frozenset[str]:
    try:
        parameters = inspect.signature(forward_type.forward).parameters
    except (TypeError, ValueError):
        return frozenset()
    return frozenset(parameters)


class _Caller:
    """Calls a causal LM's forward with a key/value cache, across transformers versions
    (``cache=`` in 5.x, ``past_key_values=`` before) and wrappers (peft)."""

    def __init__(self, model: torch.nn.Module, fast: bool = True, compile: bool = False) -> None:
        names = _forward_parameters(type(model))
        self.model = model
        self.fast = fast_forward(model, compile=compile) if fast else None
        self.cache_name = "cache" if "cache" in names else "past_key_values"
        self.keep_last = "logits_to_keep" in names

    def __call__(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: object | None = None,
        use_cache: bool = True,
        last_only: bool = False,
        hidden: bool = False,
    ):
        if self.fast is not None:
            return self.fast(
                input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                last_only=last_only,
                hidden=hidden,
            )
        kwargs: dict[str, object] = {"use_cache": use_cache}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        if cache is not None:
            kwargs[self.cache_name] = cache
        if last_only and self.keep_last:
            kwargs["logits_to_keep"] = 1
        if hidden:
            kwargs["output_hidden_states"] = True
        return self.model(input_ids=input_ids, **kwargs)

    @staticmethod
    def cache_of(output) -> object:
        cache = getattr(output, "cache", None)
        return cache if cache is not None else output.past_key_values


def _prefill(call: _Caller, prompts: PromptBatch, autocast: Any, hidden: bool) -> Any:
    """The forward pass over the prompts, logits (and hidden states) at their last
    position only; its cache then serves the completions."""
    with autocast:
        return call(
            prompts.input_ids,
            attention_mask=prompts.attention_mask,
            position_ids=prompts.position_ids(),
            last_only=True,
            hidden=hidden,
        )


def _gumbel_sample(scores: Tensor, generator: torch.Generator | None) -> Tensor:
    """One draw per row from ``softmax(scores)`` (Gumbel-max); scores shape (n, vocab)."""
    uniform = torch.rand(
        scores.shape, generator=generator, device=scores.device, dtype=torch.float32
    )
    gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-20)))
    return (scores + gumbel).argmax(-1)


def _nucleus(log_probs: Tensor, top_p: float) -> Tensor:
    """``log_probs`` with the tokens outside the top-p nucleus set to -inf."""
    sorted_lp, order = log_probs.sort(-1, descending=True)
    probs = sorted_lp.exp()
    # keep a token when the mass before it is < top_p (the most likely token always)
    before = probs.cumsum(-1) - probs
    drop_sorted = before >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return log_probs.masked_fill(drop, float("-inf"))


def _stopped(tokens: list[Tensor], stop_ids: Tensor, stop_sequences: Sequence[Tensor]) -> Tensor:
    """Rows whose last sampled token is a stop id or ends a stop sequence."""
    last = tokens[-1]
    done = torch.isin(last, stop_ids) if stop_ids.numel() else torch.zeros_like(last, dtype=bool)
    for sequence in stop_sequences:
        k = sequence.numel()
        if k <= len(tokens):
            window = torch.stack(tokens[-k:], 1)
            done = done | (window == sequence[None, :]).all(1)
    return done


def sample_group_completions(
    model: torch.nn.Module,
    prompts: PromptBatch,
    group_size: int,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    stop_ids: Sequence[int] = (),
    stop_sequences: Sequence[Sequence[int]] = (),
    pad_id: int = 0,
    generator: torch.Generator | None = None,
    with_grad: bool = False,
    entropy_grad: bool = True,
    hidden: bool = False,
    autocast: contextlib.AbstractContextManager | None = None,
    fast: bool = True,
    compile: bool = False,
) -> GroupRollout:
    """Sample ``group_size`` completions per prompt, with their log-probabilities.

    Parameters
    ----------
    model : causal LM
        Called as ``model(input_ids, attention_mask, position_ids, cache, use_cache)``.
    prompts : PromptBatch
        n_questions left-padded prompts; each is encoded once.
    group_size : int
        Completions per prompt (G).
    max_new_tokens : int
        Longest completion.
    temperature, top_p : float
        Sampling: ``softmax(logits / temperature)``, truncated to the top-p nucleus.
    stop_ids : sequence of int
        A completion ends with (and includes) the first of these tokens (EOS, a
        one-token ``</answer>``).
    stop_sequences : sequence of sequences of int
        Multi-token stop strings (e.g. ``</answer>`` under a BPE tokenizer).
    pad_id : int
        Written after a completion has stopped.
    generator : torch.Generator, optional
        On the model's device; the noise of every draw comes from it.
    with_grad : bool
        Keep the autograd graph (the log-probabilities and hidden states are then
        differentiable functions of the weights).
    entropy_grad : bool
        With ``with_grad``, also keep the entropies' graph (for an entropy bonus);
        otherwise they are computed without it.
    hidden : bool
        Return the final hidden state at each token's position (for a value head).
    autocast : context manager, optional
        Entered around each forward (bf16 autocast on CUDA).
    fast : bool
        Use :class:`bioreason.rl.lm.fast.FastLlama` when the model is a plain
        ``LlamaForCausalLM`` (the same function with fewer operations); False, or any
        other model, calls the model's own forward.
    compile : bool
        With ``fast``, run its decoder through ``torch.compile`` while gradients
        are on (:mod:`bioreason.rl.lm.fast`; compiling takes a while, once).

    Returns
    -------
    GroupRollout
        Rows ordered question by question; ``n_tokens <= max_new_tokens`` (the loop
        ends early when every completion has stopped).
    """
    if group_size < 1 or max_new_tokens < 1:
        raise ValueError("sample_group_completions: group_size and max_new_tokens must be >= 1")
    if not temperature > 0:
        raise ValueError(f"sample_group_completions: temperature must be > 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"sample_group_completions: top_p must be in (0, 1], got {top_p}")
    device = prompts.input_ids.device
    call = _Caller(model, fast, compile)
    stops = torch.as_tensor(list(stop_ids), dtype=torch.long, device=device)
    sequences = [torch.as_tensor(list(s), dtype=torch.long, device=device) for s in stop_sequences]
    sequences = [s for s in sequences if s.numel() > 1]
    autocast = autocast or contextlib.nullcontext()
    padded = prompts.attention_mask is not None
    tokens: list[Tensor] = []
    log_probs: list[Tensor] = []
    entropies: list[Tensor] = []
    states: list[Tensor] = []
    valid: list[Tensor] = []
    with torch.set_grad_enabled(with_grad):
        output = _prefill(call, prompts, autocast, hidden)
        cache = call.cache_of(output)
        cache.batch_repeat_interleave(group_size)
        logits = output.logits[:, -1].repeat_interleave(group_size, 0)
        state = output.hidden_states[-1][:, -1].repeat_interleave(group_size, 0) if hidden else None
        n_rollouts = logits.shape[0]
        attention = prompts.attention_mask.repeat_interleave(group_size, 0) if padded else None
        position = prompts.lengths.repeat_interleave(group_size)[:, None]
        done = torch.zeros(n_rollouts, dtype=torch.bool, device=device)
        for t in range(max_new_tokens):
            step_log_probs = torch.log_softmax(logits.float() / temperature, -1)
            scores = step_log_probs.detach()
            if top_p < 1:
                scores = _nucleus(scores, top_p)
            token = _gumbel_sample(scores, generator)
            token = token.masked_fill(done, pad_id)
            live = ~done
            tokens.append(token)
            valid.append(live)
            chosen = step_log_probs.gather(1, token[:, None])[:, 0]
            log_probs.append(chosen.masked_fill(done, 0.0))
            entropy_input = step_log_probs if entropy_grad else step_log_probs.detach()
            entropies.append(entropy_from_logits(entropy_input).masked_fill(done, 0.0))
            if hidden:
                states.append(state)
            done = done | _stopped(tokens, stops, sequences)
            if t == max_new_tokens - 1 or bool(done.all()):
                break
            if padded:
                attention = torch.cat([attention, attention.new_ones(n_rollouts, 1)], 1)
            with autocast:
                output = call(
                    token[:, None],
                    attention_mask=attention,
                    position_ids=position if padded else None,
                    cache=cache,
                    hidden=hidden,
                )
            position = position + 1
            logits = output.logits[:, -1]
            if hidden:
                state = output.hidden_states[-1][:, -1]
    return GroupRollout(
        tokens=torch.stack(tokens, 1),
        mask=torch.stack(valid, 1),
        log_probs=torch.stack(log_probs, 1),
        entropy=torch.stack(entropies, 1),
        hidden=torch.stack(states, 1) if hidden else None,
    )


def teacher_forced(
    model: torch.nn.Module,
    prompts: PromptBatch,
    tokens: Tensor,
    mask: Tensor,
    *,
    temperature: float = 1.0,
    shared_prefix: bool = True,
    hidden: bool = False,
    autocast: contextlib.AbstractContextManager | None = None,
    fast: bool = True,
    compile: bool = False,
) -> GroupRollout:
    """Log-probabilities (and entropies, hidden states) of given completions, in one
    training forward (gradients follow the caller's grad mode).

    Parameters
    ----------
    prompts : PromptBatch
        n_questions prompts.
    tokens, mask : Tensor, shape (n_questions * group_size, n_tokens)
        Completions, question by question (as :func:`sample_group_completions` returns).
    shared_prefix : bool
        Encode each prompt once and repeat its cache over the group (fewer tokens);
        False runs full prompt + completion sequences (needed under gradient
        checkpointing, which turns the cache off).
    fast, compile : bool
        As in :func:`sample_group_completions`.

    Returns
    -------
    GroupRollout
        ``tokens`` and ``mask`` as given; ``log_probs`` and ``entropy`` 0 at padding.
    """
    logits, states = completion_forward(
        model,
        prompts,
        tokens,
        shared_prefix=shared_prefix,
        hidden=hidden,
        autocast=autocast,
        fast=fast,
        compile=compile,
    )
    step_log_probs = torch.log_softmax(logits.float() / temperature, -1)
    chosen = step_log_probs.gather(2, tokens[..., None])[..., 0]
    entropy = entropy_from_logits(step_log_probs)
    return GroupRollout(
        tokens=tokens,
        mask=mask,
        log_probs=chosen.masked_fill(~mask, 0.0),
        entropy=entropy.masked_fill(~mask, 0.0),
        hidden=states,
    )


def completion_forward(
    model: torch.nn.Module,
    prompts: PromptBatch,
    tokens: Tensor,
    *,
    shared_prefix: bool = True,
    hidden: bool = False,
    autocast: contextlib.AbstractContextManager | None = None,
    fast: bool = True,
    compile: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """The forward pass of :func:`teacher_forced`: the model's outputs at the positions
    that predict each completion token (gradients follow the caller's grad mode).

    Parameters
    ----------
    prompts : PromptBatch
        n_questions prompts.
    tokens : Tensor of int64, shape (n_questions * group_size, n_tokens)
        Completions, question by question.
    shared_prefix, hidden, autocast, fast, compile
        As in :func:`teacher_forced`.

    Returns
    -------
    logits : Tensor, shape (n_questions * group_size, n_tokens, n_outputs)
        The output head's values (the vocabulary's logits for a causal LM).
    hidden : Tensor, shape (n_questions * group_size, n_tokens, hidden_size), or None
        The final hidden states there (the output head's input), with ``hidden``.
    """
    call = _Caller(model, fast and shared_prefix, compile)
    autocast = autocast or contextlib.nullcontext()
    n_rollouts, n_tokens = tokens.shape
    group = n_rollouts // prompts.n_questions
    if group * prompts.n_questions != n_rollouts:
        raise ValueError(
            f"teacher_forced: {n_rollouts} completions for {prompts.n_questions} prompts; "
            "need the same number per prompt"
        )
    padded = prompts.attention_mask is not None
    width = prompts.input_ids.shape[1]
    inputs = tokens[:, :-1]
    if shared_prefix:
        head = _prefill(call, prompts, autocast, hidden)
        first_logits = head.logits[:, -1:].repeat_interleave(group, 0)
        first_state = head.hidden_states[-1][:, -1:].repeat_interleave(group, 0) if hidden else None
        logits, states = first_logits, first_state
        if n_tokens > 1:
            cache = call.cache_of(head)
            cache.batch_repeat_interleave(group)
            attention = position = None
            if padded:
                attention = torch.cat(
                    [
                        prompts.attention_mask.repeat_interleave(group, 0),
                        prompts.attention_mask.new_ones(n_rollouts, n_tokens - 1),
                    ],
                    1,
                )
                start = prompts.lengths.repeat_interleave(group)[:, None]
                position = start + torch.arange(n_tokens - 1, device=tokens.device)[None, :]
            with autocast:
                rest = call(
                    inputs,
                    attention_mask=attention,
                    position_ids=position,
                    cache=cache,
                    hidden=hidden,
                )
            logits = torch.cat([first_logits, rest.logits], 1)
            if hidden:
                states = torch.cat([first_state, rest.hidden_states[-1]], 1)
    else:
        sequence = torch.cat([prompts.input_ids.repeat_interleave(group, 0), inputs], 1)
        attention = position = None
        if padded:
            attention = torch.cat(
                [
                    prompts.attention_mask.repeat_interleave(group, 0),
                    prompts.attention_mask.new_ones(n_rollouts, n_tokens - 1),
                ],
                1,
            )
            position = (attention.cumsum(-1) - 1).clamp(min=0)
        with autocast:
            output = call(
                sequence,
                attention_mask=attention,
                position_ids=position,
                use_cache=False,
                hidden=hidden,
            )
        logits = output.logits[:, width - 1 :]
        states = output.hidden_states[-1][:, width - 1 :] if hidden else None
    return logits, states


def answer_distribution_at(
    model: torch.nn.Module,
    prompts: PromptBatch,
    answer_ids: Tensor,
    *,
    temperature: float = 1.0,
    autocast: contextlib.AbstractContextManager | None = None,
    fast: bool = True,
    hidden: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """The policy's probability of each single-token answer at the answer position.

    Parameters
    ----------
    prompts : PromptBatch
        Prompts that end where the answer token comes (after ``<answer>``).
    answer_ids : Tensor of int64, shape (n_answers,)
        Token id of each answer on the grid.
    fast : bool
        As in :func:`sample_group_completions`.
    hidden : bool, default False
        Also return the final hidden state (after the last norm) at the answer position.

    Returns
    -------
    Tensor of float64, shape (n_questions, n_answers)
        ``softmax(logits / temperature)`` at the last position, restricted to the
        answers (rows sum to the probability of a valid answer;
        :func:`bioreason.lm.answer_protocol.exact_answers` gives the distribution given
        a valid answer and ``q_exact``). No gradients.
    Tensor of float32, shape (n_questions, hidden_size)
        With ``hidden=True``, as a second element: the final hidden states.
    """
    call = _Caller(model, fast)
    autocast = autocast or contextlib.nullcontext()
    with torch.no_grad(), autocast:
        output = call(
            prompts.input_ids,
            attention_mask=prompts.attention_mask,
            position_ids=prompts.position_ids(),
            use_cache=False,
            last_only=True,
            hidden=hidden,
        )
    probabilities = answer_token_probabilities(output.logits[:, -1], answer_ids, temperature)
    if not hidden:
        return probabilities
    return probabilities, output.hidden_states[-1][:, -1].float()
