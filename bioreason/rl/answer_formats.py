"""How an LM's completion is read as a probability answer: a registry of answer parsers,
and which tokens the grid's answers are.

Every parser has the signature of :func:`bioreason.rl.rewards.parse_answers`::

    parser(texts, grid) -> ParsedAnswers   (probabilities N / scale, NaN when invalid)

``"tagged"`` is :func:`~bioreason.rl.rewards.parse_answers` (the last
``<answer>N</answer>`` counts); ``"first_integer"`` reads the first whitespace-separated
integer of the completion (the speed benchmark's format: a bare number).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import torch

from bioreason.registry import Registry
from bioreason.rl.rewards import AnswerGrid, ParsedAnswers, parse_answers

__all__ = [
    "ANSWER_PARSERS",
    "parse_first_integer",
    "single_token_answer_ids",
    "stop_token_sequences",
]

#: Answer parsers by name: ``parser(texts, grid) -> ParsedAnswers``.
ANSWER_PARSERS: Registry[Callable[[Sequence[str], AnswerGrid], ParsedAnswers]] = Registry(
    "answer parser"
)
ANSWER_PARSERS.register("tagged", parse_answers)

_INTEGER = re.compile(r"(?<!\S)[+-]?\d+(?!\S)")


@ANSWER_PARSERS.register("first_integer")
def parse_first_integer(texts: Sequence[str], grid: AnswerGrid | None = None) -> ParsedAnswers:
    """The first whitespace-separated integer of each completion, as ``N / grid.scale``.

    A completion without one, or whose first integer is off the grid, is invalid (NaN).

    Returns
    -------
    ParsedAnswers
        ``probabilities`` of shape (n,), ``valid``, ``n_invalid``.
    """
    grid = grid or AnswerGrid()
    values = []
    for index, text in enumerate(texts):
        if text is not None and not isinstance(text, str):
            raise TypeError(f"parse_first_integer: texts[{index}] is {type(text).__name__}")
        match = _INTEGER.search(text or "")
        number = int(match.group()) if match else None
        ok = number is not None and grid.low <= number <= grid.high
        values.append(number / grid.scale if ok else math.nan)
    probabilities = torch.tensor(values, dtype=torch.float64)
    valid = ~torch.isnan(probabilities)
    return ParsedAnswers(probabilities, valid, int((~valid).sum()))


def single_token_answer_ids(tokenizer, grid: AnswerGrid, prefix: str = "") -> list[int] | None:
    """The token id of each grid answer when every answer is one token after ``prefix``.

    An answer ``N`` is one token when encoding ``prefix + sep + "N"`` (``sep`` is ``""``
    or ``" "``, whichever works for every answer) gives the tokens of ``prefix`` plus
    exactly one token that is not the unknown token and decodes to ``N``.

    Returns
    -------
    list of int of length ``grid.size``, or None (some answer is several tokens, as
    with BPE tokenizers that split numbers).
    """
    base = tokenizer.encode(prefix, add_special_tokens=False) if prefix else []
    unk = getattr(tokenizer, "unk_token_id", None)
    for separator in ("", " "):
        if not prefix and separator:
            break
        ids = []
        for number in range(grid.low, grid.high + 1):
            encoded = tokenizer.encode(f"{prefix}{separator}{number}", add_special_tokens=False)
            if len(encoded) != len(base) + 1 or encoded[: len(base)] != base:
                break
            token = encoded[-1]
            if token == unk or tokenizer.decode([token]).strip() != str(number):
                break
            ids.append(int(token))
        else:
            if len(set(ids)) == len(ids):
                return ids
    return None


def stop_token_sequences(tokenizer, strings: Sequence[str]) -> tuple[list[int], list[list[int]]]:
    """Stop tokens of a completion: EOS, and each of ``strings`` as its token ids.

    Returns
    -------
    stop_ids : list of int
        EOS and the strings that are one token.
    stop_sequences : list of list of int
        The strings that are several tokens.
    """
    stop_ids = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    sequences = []
    unk = getattr(tokenizer, "unk_token_id", None)
    for text in strings:
        ids = tokenizer.encode(text, add_special_tokens=False)
        if not ids or (unk is not None and unk in ids):
            continue  # the tokenizer cannot write it; it can never stop a completion
        if len(ids) == 1:
            if ids[0] not in stop_ids:
                stop_ids.append(int(ids[0]))
        else:
            sequences.append([int(i) for i in ids])
    return stop_ids, sequences
