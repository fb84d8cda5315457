"""Supervised warm start: teach the answer format with uninformative answers.

A randomly initialised model (or a pretrained one that has never seen the format)
writes few parsable answers, so RL would first spend its steps on the format. The warm
start fine-tunes on ``prompt -> <answer>K</answer><eos>`` with ``K`` uniform over the
grid, whatever the question: the model learns to answer validly but learns nothing
about the outcome, so RL starts from a valid, uncalibrated predictor (the analogue of
the zero-initialised tabular policy).

When every answer is one token the answer position is trained against the uniform
distribution over the grid itself (the cross-entropy to uniform, no sampling noise);
otherwise ``K`` is drawn uniformly for each example and its tokens are the targets.

**What is trained** (``trainable``). Training the whole model on a target that does not
depend on the prompt teaches it to ignore the prompt at the answer position: the final
hidden state there becomes (almost) the same for every question, and RL afterwards
cannot make the answer depend on the question. ``"answer_rows"`` trains only the
embedding rows (input and output, tied or not) of the tokens the model must write: the
grid's answers, ``</answer>``, the end of sequence (and ``<answer>`` when the prompts do
not end with it); every other weight stays as it was, so the state at the answer
position keeps what the prompt put there.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from bioreason.lm.answer_protocol import AnswerGrid, grid_answers, resolve_grid
from bioreason.lm.prompts import format_prompt, has_chat_template
from bioreason.lm.tokenizer import ANSWER_CLOSE, ANSWER_OPEN, answer_token_ids

if TYPE_CHECKING:
    from bioreason.lm.predictor import Predictor

__all__ = ["warm_start"]


def _unwrap(predictor_or_model: Any, tokenizer: PreTrainedTokenizerBase | None) -> tuple:
    from bioreason.lm.predictor import Predictor

    if isinstance(predictor_or_model, Predictor):
        return predictor_or_model.model, tokenizer or predictor_or_model.tokenizer
    if not isinstance(predictor_or_model, torch.nn.Module):
        raise TypeError(
            "warm_start: pass a Predictor or a causal LM (torch.nn.Module), got "
            f"{type(predictor_or_model).__name__}"
        )
    if tokenizer is None:
        raise TypeError("warm_start: a model needs its tokenizer (tokenizer=None)")
    return predictor_or_model, tokenizer


def _check_positive(name: str, value: Any, kind: type = int) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float) if kind is float else int)
    if not ok or not value > 0 or (kind is float and not math.isfinite(value)):
        raise ValueError(f"warm_start: {name} must be a positive {kind.__name__}, got {value!r}")


def warm_start(
    predictor_or_model: Predictor | torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase | None,
    prompts: Sequence[str],
    grid: AnswerGrid | None = None,
    steps: int = 200,
    lr: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
    *,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
    uniform_target: bool = True,
    trainable: str = "all",
) -> list[dict[str, float]]:
    """Fine-tune a causal LM to answer ``<answer>K</answer><eos>`` with uniform ``K``.

    Parameters
    ----------
    predictor_or_model
        A :class:`bioreason.lm.Predictor` or a causal LM; trained in place (only its
        parameters with ``requires_grad``, so a LoRA model trains its adapters).
    tokenizer
        The model's tokenizer; None takes the predictor's.
    prompts
        Questions (a task table's prompts) or formatted prompts; each is formatted with
        :func:`bioreason.lm.format_prompt`. A prompt that ends with ``<answer>`` is
        taught ``K</answer><eos>``.
    grid : AnswerGrid, optional
        Default integers 1..99.
    steps, lr, batch_size
        AdamW steps, learning rate, and prompts per step (drawn with replacement).
    seed
        Seeds the batches and answers (the global torch random state is left as it was).
    weight_decay, max_grad_norm
        AdamW weight decay; gradient-norm clipping (None: none).
    uniform_target
        When every answer is one token, train the answer position against the exact
        uniform distribution over the grid (default); False draws ``K`` per example.
    trainable : {"all", "answer_rows"}, default "all"
        ``"all"``: every parameter with ``requires_grad``; ``"answer_rows"``: only the
        embedding rows of the tokens the model writes (see the module docstring); the
        other parameters are left untouched and their ``requires_grad`` restored after.

    Returns
    -------
    list of dict
        One row per step: ``step`` (1-based), ``loss`` (mean cross-entropy per target
        token; with the uniform target its minimum is ``log(grid.size) / n_target_tokens``
        rather than 0), ``seconds`` since the start.
    """
    model, tokenizer = _unwrap(predictor_or_model, tokenizer)
    grid = resolve_grid(grid, "warm_start")
    if isinstance(prompts, str):
        raise TypeError("warm_start: prompts must be a sequence of strings, got a single string")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("warm_start: no prompts given")
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        _check_positive(name, value)
    _check_positive("lr", lr, float)
    if trainable not in _TRAINABLE:
        raise ValueError(
            f"warm_start: trainable must be one of {list(_TRAINABLE)}, got {trainable!r}"
        )
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("warm_start: the model has no trainable parameters (requires_grad)")
    if tokenizer.eos_token_id is None:
        raise ValueError("warm_start: the tokenizer has no EOS token to end the answer with")

    device = parameters[0].device
    special = not has_chat_template(tokenizer)
    texts = [format_prompt(tokenizer, prompt) for prompt in prompts]
    prompt_ids = [tokenizer.encode(text, add_special_tokens=special) for text in texts]
    opened = [text.rstrip().endswith(ANSWER_OPEN) for text in texts]
    answers = grid_answers(grid)
    single = answer_token_ids(tokenizer, grid)
    soft = uniform_target and single is not None
    eos = int(tokenizer.eos_token_id)

    def target(answer: str, open_tag: bool) -> list[int]:
        text = ("" if open_tag else ANSWER_OPEN) + answer + ANSWER_CLOSE
        return tokenizer.encode(text, add_special_tokens=False) + [eos]

    targets = {flag: [target(a, flag) for a in answers] for flag in set(opened)}
    # With single-token answers the answer token sits at a fixed offset in the target.
    offset = {
        flag: 0 if flag else len(tokenizer.encode(ANSWER_OPEN, add_special_tokens=False))
        for flag in targets
    }
    answer_index = torch.tensor(single or [0], dtype=torch.long, device=device)

    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    longest = max(len(ids) for ids in prompt_ids) + max(
        len(t) for ts in targets.values() for t in ts
    )
    if isinstance(limit, int) and longest > limit:
        raise ValueError(
            f"warm_start: prompt and answer take up to {longest} tokens, more than the "
            f"model's max_position_embeddings={limit}; shorten the prompts"
        )

    restore: list[tuple[torch.nn.Parameter, bool]] = []
    hooks = []
    if trainable == "answer_rows":
        rows = sorted(
            {token for ts in targets.values() for t in ts for token in t} | set(single or [])
        )
        parameters, restore, hooks = _answer_rows_only(model, rows)
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    generator = torch.Generator().manual_seed(seed)

    def train_step() -> float:
        rows = torch.randint(len(prompts), (batch_size,), generator=generator).tolist()
        picks = torch.randint(grid.size, (batch_size,), generator=generator).tolist()
        input_ids, mask, labels, soft_at = (
            tensor.to(device)
            for tensor in _batch(
                [prompt_ids[r] for r in rows],
                [targets[opened[r]][k] for r, k in zip(rows, picks)],
                [offset[opened[r]] if soft else -1 for r in rows],
                pad,
            )
        )
        logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1]
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        next_labels = labels[:, 1:]  # position t predicts token t + 1
        chosen = next_labels != -100
        token_log_probs = log_probs.gather(-1, next_labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        if soft:
            # Cross-entropy to the uniform distribution over the answers, at the answer slot.
            uniform = log_probs.index_select(-1, answer_index).mean(-1)
            token_log_probs = torch.where(soft_at[:, 1:], uniform, token_log_probs)
        loss = -(token_log_probs * chosen).sum() / chosen.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
        optimizer.step()
        return float(loss.detach())

    history: list[dict[str, float]] = []
    was_training = model.training
    model.train()
    start_time = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)  # dropout, when the model has any
            for step in range(1, steps + 1):
                loss = train_step()
                seconds = time.perf_counter() - start_time
                history.append({"step": step, "loss": loss, "seconds": seconds})
    finally:
        model.train(was_training)
        optimizer.zero_grad(set_to_none=True)  # no gradient left for a later optimizer
        for hook in hooks:
            hook.remove()
        for parameter, flag in restore:
            parameter.requires_grad_(flag)
    return history


_TRAINABLE = ("all", "answer_rows")


def _answer_rows_only(model: torch.nn.Module, token_ids: list[int]) -> tuple[list, list, list]:
    """Freeze every parameter but the input and output embedding matrices, and mask their
    gradients to the rows of ``token_ids``.

    Returns
    -------
    parameters : list of Parameter
        The embedding matrices (one when tied).
    restore : list of (Parameter, bool)
        Every parameter with its ``requires_grad`` before.
    hooks : list
        Gradient hooks to remove afterwards.
    """
    embeddings = []
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, getter, lambda: None)()
        weight = getattr(module, "weight", None)
        if weight is not None and all(weight is not e for e in embeddings):
            embeddings.append(weight)
    if not embeddings:
        raise ValueError(
            "warm_start: trainable='answer_rows' needs a model with input/output embedding "
            "matrices (get_input_embeddings / get_output_embeddings)"
        )
    restore = [(p, p.requires_grad) for p in model.parameters()]
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    hooks = []
    for weight in embeddings:
        weight.requires_grad_(True)
        mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
        mask[torch.as_tensor(token_ids, dtype=torch.long, device=weight.device)] = 1
        hooks.append(weight.register_hook(lambda grad, mask=mask: grad * mask))
    return embeddings, restore, hooks


def _batch(
    prompts: list[list[int]], targets: list[list[int]], answer_offsets: list[int], pad: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Right-padded ``prompt + target`` rows.

    Returns
    -------
    input_ids : Tensor of int64, shape (batch, length)
    attention_mask : Tensor of int64, shape (batch, length)
        1 on tokens, 0 on padding.
    labels : Tensor of int64, shape (batch, length)
        The target tokens, -100 on prompt and padding.
    soft_at : Tensor of bool, shape (batch, length)
        True at the position of the answer token when it is trained against the uniform
        distribution (``answer_offsets[row] >= 0``).
    """
    width = max(len(p) + len(t) for p, t in zip(prompts, targets))
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    labels = torch.full((len(prompts), width), -100, dtype=torch.long)
    soft_at = torch.zeros((len(prompts), width), dtype=torch.bool)
    for row, (prompt, target, offset) in enumerate(zip(prompts, targets, answer_offsets)):
        sequence = prompt + target
        input_ids[row, : len(sequence)] = torch.tensor(sequence)
        attention_mask[row, : len(sequence)] = 1
        labels[row, len(prompt) : len(sequence)] = torch.tensor(target)
        if offset >= 0:
            soft_at[row, len(prompt) + offset] = True
    return input_ids, attention_mask, labels, soft_at
