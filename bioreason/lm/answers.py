"""Answers of a causal LM: the exact answer distribution, its mean, sampled completions.

When every answer of the grid is one token (the default word-level tokenizer), the
probability that the model answers ``K`` is one softmax entry at the answer position,
right after ``<answer>``: :func:`answer_distribution` reads all of them in one forward
pass, and :func:`expected_answer` is their mean probability ``q_exact`` (no sampling
noise). :func:`sample_completions` draws completions with ``generate``, stopping at the
end-of-sequence token or at ``</answer>``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from bioreason.lm.answer_protocol import (
    AnswerGrid,
    answer_token_probabilities,
    exact_answers,
    prompt_spread,
    resolve_grid,
)
from bioreason.lm.prompts import encode_prompts, format_prompt, position_ids
from bioreason.lm.tokenizer import ANSWER_CLOSE, answer_token_ids

__all__ = [
    "answer_distribution",
    "answer_position_spread",
    "expected_answer",
    "sample_completions",
    "stop_token_ids",
]


def _device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _accepts(model: torch.nn.Module, name: str, *, through_kwargs: bool = True) -> bool:
    """Whether ``model.forward`` takes ``name`` (by name, or through ``**kwargs``)."""
    parameters = inspect.signature(model.forward).parameters
    if name in parameters:
        return True
    return through_kwargs and any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def _check_prompts(prompts: Sequence[str], where: str) -> list[str]:
    if isinstance(prompts, str):
        raise TypeError(f"{where}: prompts must be a sequence of strings, got a single string")
    prompts = list(prompts)
    if not prompts:
        raise ValueError(f"{where}: no prompts given")
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"{where}: prompts[{index}] is {type(prompt).__name__}, not a string")
    return prompts


def _check_length(model: torch.nn.Module, length: int, where: str) -> None:
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and length > limit:
        raise ValueError(
            f"{where}: a prompt is {length} tokens, longer than the model's "
            f"max_position_embeddings={limit}; shorten the prompts or use a model with a "
            "longer context (max_position_embeddings in the preset)"
        )


def answer_distribution(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    grid: AnswerGrid | None = None,
    *,
    normalize: bool = False,
    answer_ids: Sequence[int] | None = None,
    batch_size: int = 64,
) -> Tensor:
    """The model's probability of each grid answer at the answer position.

    Parameters
    ----------
    model
        A causal LM (``transformers`` model, also wrapped by peft).
    tokenizer
        Its tokenizer; every grid answer must be one token (:func:`answer_token_ids`).
    prompts
        Questions or formatted prompts; each is formatted with
        ``format_prompt(..., open_answer=True)`` so that it ends with ``<answer>`` (a
        prompt that already does is used as it is).
    grid : AnswerGrid, optional
        Default integers 1..99.
    normalize
        Divide each row by its sum: the distribution given that the model answers on
        the grid. Without it a row sums to the probability of a valid answer token.
    answer_ids
        The answers' token ids, when already known (``Predictor.answer_token_ids``).
    batch_size
        Prompts per forward pass.

    Returns
    -------
    Tensor of float64, shape (n_prompts, grid.size), on the CPU
        Column ``k`` is the probability of answer ``grid.low + k``. Computed without
        gradients, in eval mode (the model's mode is restored).

    Raises
    ------
    ValueError
        Some answer is several tokens with this tokenizer (use sampled answers then),
        or a prompt is longer than the model's context.
    """
    where = "answer_distribution"
    grid = resolve_grid(grid, where)
    prompts = _check_prompts(prompts, where)
    if answer_ids is None:
        answer_ids = answer_token_ids(tokenizer, grid)
        if answer_ids is None:
            raise ValueError(
                f"{where}: the answers {grid.low}..{grid.high} are not single tokens with "
                "this tokenizer, so there is no one answer position to read; estimate q "
                "from sampled answers (sample_completions + bioreason.lm.parse_answers)"
            )
    if len(answer_ids) != grid.size:
        raise ValueError(f"{where}: {len(answer_ids)} answer ids for a grid of {grid.size}")
    if batch_size < 1:
        raise ValueError(f"{where}: batch_size must be >= 1, got {batch_size}")
    device = _device(model)
    index = torch.as_tensor(list(answer_ids), dtype=torch.long, device=device)
    rows = [
        answer_token_probabilities(logits, index).cpu()
        for logits, _ in _answer_position(model, tokenizer, prompts, batch_size, where)
    ]
    distribution = torch.cat(rows)
    if normalize:
        distribution = exact_answers(distribution, grid)[0]
    return distribution


def _answer_position(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    batch_size: int,
    where: str,
    hidden: bool = False,
):
    """Yield, per batch of prompts, the logits at the answer position (shape (batch,
    vocab_size)) and, with ``hidden``, the final hidden state there (shape (batch,
    hidden_size), else None): each prompt formatted to end with ``<answer>``, no
    gradients, in eval mode (the model's mode is restored)."""
    device = _device(model)
    texts = [format_prompt(tokenizer, prompt, open_answer=True) for prompt in prompts]
    # Only the last position's logits are needed; older transformers call it otherwise.
    keep_last = _accepts(model, "logits_to_keep", through_kwargs=False)
    extra: dict = {"logits_to_keep": 1} if keep_last else {}
    if hidden:
        extra["output_hidden_states"] = True
    pass_positions = _accepts(model, "position_ids")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                input_ids, mask = encode_prompts(tokenizer, texts[start : start + batch_size])
                _check_length(model, input_ids.shape[1], where)
                input_ids, mask = input_ids.to(device), mask.to(device)
                if pass_positions:
                    extra["position_ids"] = position_ids(mask)
                output = model(input_ids=input_ids, attention_mask=mask, **extra)
                state = output.hidden_states[-1][:, -1].float().cpu() if hidden else None
                yield output.logits[:, -1], state
    finally:
        model.train(was_training)


def answer_position_spread(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    batch_size: int = 64,
) -> float:
    """How much the state at the answer position depends on the prompt
    (:func:`bioreason.lm.answer_protocol.prompt_spread` of the final hidden states after
    ``prompt <answer>``, one per prompt).

    A warm start or an RL run that drives it toward 0 has made the answer independent of
    the question: no later update of the answer tokens can then tell questions apart.

    Parameters
    ----------
    model, tokenizer
        A causal LM and its tokenizer.
    prompts
        Questions or formatted prompts (formatted as by :func:`answer_distribution`).
    batch_size
        Prompts per forward pass.

    Returns
    -------
    float
        In [0, 1]; NaN for fewer than two prompts.
    """
    where = "answer_position_spread"
    prompts = _check_prompts(prompts, where)
    states = [
        state for _, state in _answer_position(model, tokenizer, prompts, batch_size, where, True)
    ]
    return prompt_spread(torch.cat(states))


def expected_answer(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    grid: AnswerGrid | None = None,
    **options,
) -> Tensor:
    """The mean probability answer, ``q_exact = sum_k pi(k | answered) q_k``.

    The answer distribution (:func:`answer_distribution`, normalized to the grid)
    weights the grid's probabilities ``q_k = k / grid.scale``
    (:func:`bioreason.lm.answer_protocol.exact_answers`, which the RL trainer's
    predictions use too). ``options`` go to :func:`answer_distribution`
    (``answer_ids``, ``batch_size``).

    Returns
    -------
    Tensor of float64, shape (n_prompts,), on the CPU
    """
    grid = resolve_grid(grid, "expected_answer")
    options["normalize"] = False
    distribution = answer_distribution(model, tokenizer, prompts, grid, **options)
    return exact_answers(distribution, grid)[1]


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end a completion: EOS, and ``</answer>`` when it is one token.

    Returns
    -------
    list of int
    """
    stops = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    close = tokenizer.encode(ANSWER_CLOSE, add_special_tokens=False)
    if len(close) == 1 and close[0] != tokenizer.unk_token_id and close[0] not in stops:
        stops.append(int(close[0]))
    return stops


def sample_completions(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    num_samples: int = 1,
    max_new_tokens: int = 8,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    batch_size: int = 64,
) -> list[list[str]]:
    """Sample completions with ``model.generate`` (a plain loop; the RL trainer has a
    faster one).

    Parameters
    ----------
    prompts
        Questions or formatted prompts (formatted with :func:`format_prompt`).
    num_samples
        Completions per prompt.
    max_new_tokens, temperature, top_p
        Sampling settings; ``temperature=0`` decodes greedily. Generation stops at EOS
        or ``</answer>`` (:func:`stop_token_ids`).
    seed
        Seeds the sampling (the global torch random state is left as it was); None
        uses the global state.

    Returns
    -------
    list of list of str, shape (n_prompts, num_samples)
        The generated text after each prompt, special tokens removed, e.g.
        ``"<answer> 42 </answer>"``; :func:`bioreason.lm.parse_answers` reads it.
    """
    where = "sample_completions"
    prompts = _check_prompts(prompts, where)
    if num_samples < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"{where}: num_samples, max_new_tokens and batch_size must be >= 1")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"{where}: need temperature >= 0 and 0 < top_p <= 1")
    device = _device(model)
    texts = [format_prompt(tokenizer, prompt) for prompt in prompts]
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p}
        if temperature > 0
        else {"do_sample": False}
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rng_devices = [device] if device.type == "cuda" else []
    completions: list[list[str]] = []
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=rng_devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            for start in range(0, len(texts), batch_size):
                input_ids, mask = encode_prompts(tokenizer, texts[start : start + batch_size])
                _check_length(model, input_ids.shape[1] + max_new_tokens, where)
                with torch.no_grad():
                    output = model.generate(
                        input_ids=input_ids.to(device),
                        attention_mask=mask.to(device),
                        max_new_tokens=max_new_tokens,
                        num_return_sequences=num_samples,
                        eos_token_id=stop_token_ids(tokenizer),
                        pad_token_id=pad,
                        **sampling,
                    )
                decoded = tokenizer.batch_decode(
                    output[:, input_ids.shape[1] :], skip_special_tokens=True
                )
                completions.extend(
                    decoded[row : row + num_samples] for row in range(0, len(decoded), num_samples)
                )
    finally:
        model.train(was_training)
    return completions
