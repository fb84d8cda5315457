"""What the model reads: prompt formatting (chat template or plain text) and batch encoding.

**The prompt format.** A question from a task table is what the model reads, as it is,
when the tokenizer has no chat template (the default word-level tokenizer); the model
then writes ``<answer>K</answer>`` and ``<eos>`` (:func:`bioreason.lm.warm_start`
teaches that). When the tokenizer has a chat template (instruction-tuned models), the
question becomes one user message, rendered with the template and its generation
prompt, so the model answers as the assistant. ``open_answer=True`` also appends
``<answer>``: the text then ends at the answer position, where
:func:`bioreason.lm.answer_distribution` reads the probability of every answer.

:func:`format_prompt` is idempotent: a text that is already formatted is returned
unchanged, so functions that format their input accept questions or formatted
prompts alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from bioreason.lm.answer_protocol import pad_token_id
from bioreason.lm.tokenizer import ANSWER_OPEN

__all__ = ["encode_prompts", "format_prompt", "has_chat_template", "position_ids"]

_MARK = "\x00bioreason-question\x00"


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether ``tokenizer`` has a chat template (then :func:`format_prompt` uses it)."""
    return bool(getattr(tokenizer, "chat_template", None))


def _render(tokenizer: PreTrainedTokenizerBase, question: str) -> str:
    messages = [{"role": "user", "content": question}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as err:  # a template raises whatever its author wrote
        raise ValueError(
            f"format_prompt: the tokenizer's chat template fails on a user message: "
            f"{type(err).__name__}: {err}; fix the template or set tokenizer.chat_template = "
            "None to use plain prompts"
        ) from None
    if not isinstance(text, str):
        raise ValueError(
            "format_prompt: the tokenizer's chat template did not render to text "
            f"(got {type(text).__name__})"
        )
    return text


def _already_rendered(tokenizer: PreTrainedTokenizerBase, text: str) -> bool:
    """Whether ``text`` already has the template's text around the user message."""
    try:
        prefix, _, suffix = _render(tokenizer, _MARK).partition(_MARK)
    except ValueError:
        return False
    if not prefix.strip() and not suffix.strip():
        return False  # a template that adds nothing: rendering again changes nothing
    body = text.removesuffix(ANSWER_OPEN)
    return text.startswith(prefix) and body.endswith(suffix)


def format_prompt(
    tokenizer: PreTrainedTokenizerBase, question: str, *, open_answer: bool = False
) -> str:
    """The text the model reads for one question.

    Parameters
    ----------
    tokenizer
        Its chat template, when it has one, wraps the question as a user message (with
        the generation prompt); without one the question is used as it is.
    question
        A task table's prompt, or an already formatted prompt (returned unchanged).
    open_answer
        Also append ``<answer>`` (unless the text already ends with it), so that the
        text ends where the answer token comes: plain prompts get ``" <answer>"``,
        chat prompts ``"<answer>"`` right after the generation prompt.

    Returns
    -------
    str
    """
    if not isinstance(question, str):
        raise TypeError(f"format_prompt: the question must be a string, got {type(question)}")
    text = question
    if has_chat_template(tokenizer) and not _already_rendered(tokenizer, question):
        text = _render(tokenizer, question)
    if open_answer and not text.rstrip().endswith(ANSWER_OPEN):
        text = (
            text + ANSWER_OPEN if has_chat_template(tokenizer) else f"{text.rstrip()} {ANSWER_OPEN}"
        )
    return text


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Tokenize formatted prompts into one left-padded batch.

    The tokenizer's special tokens (``<bos>``) are added to plain prompts; a chat
    template writes its own, so chat prompts are encoded without them.

    Parameters
    ----------
    prompts
        Formatted prompts (:func:`format_prompt`), not questions.

    Returns
    -------
    input_ids : Tensor of int64, shape (n_prompts, max_length)
        Left-padded with the pad token (the EOS token when there is none).
    attention_mask : Tensor of int64, shape (n_prompts, max_length)
        1 on tokens, 0 on padding.
    """
    if isinstance(prompts, str):
        raise TypeError("encode_prompts expects a sequence of prompts, got a single string")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("encode_prompts: no prompts given")
    encoded = tokenizer(
        prompts, add_special_tokens=not has_chat_template(tokenizer), padding=False
    )["input_ids"]
    empty = [index for index, ids in enumerate(encoded) if not ids]
    if empty:
        raise ValueError(f"encode_prompts: prompt {empty[0]} encodes to no tokens")
    width = max(len(ids) for ids in encoded)
    pad = pad_token_id(tokenizer)
    input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding: 0 at each row's first token.

    ``attention_mask`` : Tensor, shape (batch, length). Returns a Tensor of int64 of
    the same shape (padding positions get 0), as ``generate`` computes them, so a
    left-padded row gives the logits it gives alone.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
