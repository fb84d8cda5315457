"""The answer protocol: how a language model writes a probability and how it is read.

A model answers ``<answer>N</answer>`` with ``N`` an integer on an :class:`AnswerGrid`
(by default 1..99, read as ``q = N / 100``). This module holds everything both sides of
that contract share, the predictor (:mod:`bioreason.lm`) and the RL trainer
(:mod:`bioreason.rl.lm`):

* the grid, and the parsers that read a completion's text as a probability
  (:data:`ANSWER_PARSERS`: ``"tagged"`` is :func:`parse_answers`, ``"first_integer"`` is
  :func:`parse_first_integer`), NaN marking an invalid answer;
* which tokens the grid's answers are (:func:`single_token_answer_ids`), which
  tokens stop a completion (:func:`stop_token_sequences`) and which pads a batch
  (:func:`pad_token_id`);
* the exact answer: when every answer is one token, the probability of answer ``N`` is
  one softmax entry at the answer position (:func:`answer_token_probabilities`), and
  ``q_exact`` is the mean of that distribution given a valid answer
  (:func:`exact_answers`): the predictor's ``expected_answer`` and the trainer's
  predictions both compute it here.

It imports torch and the registry only (no transformers), so the RL package can import
it without paying for transformers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bioreason.registry import Registry

__all__ = [
    "ANSWER_PARSERS",
    "AnswerGrid",
    "ParsedAnswers",
    "answer_token_probabilities",
    "exact_answers",
    "parse_answers",
    "pad_token_id",
    "parse_first_integer",
    "prompt_spread",
    "single_token_answer_ids",
    "stop_token_sequences",
]


# ---------------------------------------------------------------- the grid
@dataclass(frozen=True)
class AnswerGrid:
    """The integer answers a policy may give and the probability each one means.

    Parameters
    ----------
    low, high
        Smallest and largest integer answer (inclusive).
    scale
        ``q = N / scale``.
    """

    low: int = 1
    high: int = 99
    scale: int = 100

    def __post_init__(self) -> None:
        for name in ("low", "high", "scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"AnswerGrid: {name} must be an integer, got {value!r}")
        if not 0 < self.low <= self.high < self.scale:
            raise ValueError(
                f"AnswerGrid needs 0 < low <= high < scale so that every q lies in (0, 1); "
                f"got low={self.low}, high={self.high}, scale={self.scale}"
            )

    @property
    def size(self) -> int:
        return self.high - self.low + 1

    def probabilities(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """The probabilities of the grid, shape ``(size,)``: 0.01, 0.02, ..., 0.99 by default."""
        return torch.arange(self.low, self.high + 1, dtype=dtype) / self.scale


def resolve_grid(grid: AnswerGrid | None, where: str) -> AnswerGrid:
    """``grid`` itself, or the default grid (integers 1..99, ``q = N / 100``) for None.

    Raises
    ------
    TypeError
        ``grid`` is neither an :class:`AnswerGrid` nor None (naming ``where``).
    """
    if grid is None:
        return AnswerGrid()
    if not isinstance(grid, AnswerGrid):
        raise TypeError(
            f"{where}: grid must be a bioreason.lm.AnswerGrid (or None for 1..99), got {grid!r}"
        )
    return grid


def grid_answers(grid: AnswerGrid) -> list[str]:
    """The grid's answers as the text a model writes: ``["1", "2", ..., "99"]``."""
    return [str(number) for number in range(grid.low, grid.high + 1)]


# ---------------------------------------------------------------- parsing completions
@dataclass(frozen=True)
class ParsedAnswers:
    """Result of an answer parser (:func:`parse_answers`).

    Attributes
    ----------
    probabilities : Tensor, shape (n,)
        ``q = N / scale`` for valid answers, NaN for invalid ones.
    valid : Tensor of bool, shape (n,)
    n_invalid : int
        How many answers were unparsable or off the grid.
    """

    probabilities: Tensor
    valid: Tensor
    n_invalid: int


_ANSWER = re.compile(r"<answer>\s*([+-]?\d+)\s*</answer>", re.IGNORECASE | re.DOTALL)
_INTEGER = re.compile(r"(?<!\S)[+-]?\d+(?!\S)")


def _parsed(values: list[float]) -> ParsedAnswers:
    probabilities = torch.tensor(values, dtype=torch.float64)
    valid = ~torch.isnan(probabilities)
    return ParsedAnswers(probabilities, valid, int((~valid).sum()))


def parse_answers(texts: Sequence[str], grid: AnswerGrid | None = None) -> ParsedAnswers:
    """Parse ``<answer>N</answer>`` from each completion.

    The last ``<answer>`` tag of a completion counts (a model may quote the format
    before answering). ``N`` must be an integer in ``[grid.low, grid.high]``.

    Returns
    -------
    ParsedAnswers
        ``probabilities`` of shape (len(texts),), NaN where invalid.
    """
    if isinstance(texts, str):
        raise TypeError("parse_answers expects a sequence of completions, got a single string")
    if not isinstance(texts, Sequence) and not hasattr(texts, "__iter__"):
        raise TypeError(
            f"parse_answers expects a sequence of completions (strings), got {type(texts).__name__}"
        )
    if grid is not None and not isinstance(grid, AnswerGrid):
        raise TypeError(f"parse_answers: grid must be an AnswerGrid, got {grid!r}")
    grid = grid or AnswerGrid()
    values = []
    for index, text in enumerate(texts):
        if text is not None and not isinstance(text, str):
            raise TypeError(
                f"parse_answers: texts[{index}] is {type(text).__name__}, not a string; "
                "pass the completions' text (None counts as an invalid answer)"
            )
        matches = _ANSWER.findall(text or "")
        number = int(matches[-1]) if matches else None
        ok = number is not None and grid.low <= number <= grid.high
        values.append(number / grid.scale if ok else math.nan)
    return _parsed(values)


#: Answer parsers by name: ``parser(texts, grid) -> ParsedAnswers`` (probabilities
#: ``N / scale``, NaN when invalid).
ANSWER_PARSERS: Registry[Callable[[Sequence[str], AnswerGrid], ParsedAnswers]] = Registry(
    "answer parser"
)
ANSWER_PARSERS.register("tagged", parse_answers)


@ANSWER_PARSERS.register("first_integer")
def parse_first_integer(texts: Sequence[str], grid: AnswerGrid | None = None) -> ParsedAnswers:
    """The first whitespace-separated integer of each completion, as ``N / grid.scale``
    (the speed benchmark's format: a bare number).

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
    return _parsed(values)


# ---------------------------------------------------------------- tokens
def single_token_answer_ids(tokenizer: Any, grid: AnswerGrid, prefix: str = "") -> list[int] | None:
    """The token id of each grid answer when every answer is one token after ``prefix``.

    An answer ``N`` is one token when encoding ``prefix + sep + "N"`` (``sep`` is ``""``
    or ``" "``, whichever works for every answer) gives the tokens of ``prefix`` plus
    exactly one token that is not the unknown token and decodes to ``N``, and no two
    answers share a token.

    Parameters
    ----------
    tokenizer : transformers tokenizer
        Anything with ``encode(text, add_special_tokens=False)`` and ``decode(ids)``.

    Returns
    -------
    list of int of length ``grid.size``, or None
        None when some answer is several tokens (as with BPE tokenizers that split
        numbers).
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


def pad_token_id(tokenizer: Any) -> int:
    """The token a batch of prompts or completions is padded with: the tokenizer's pad
    token, else its end-of-sequence token, else 0."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0


def stop_token_sequences(
    tokenizer: Any, strings: Sequence[str]
) -> tuple[list[int], list[list[int]]]:
    """Stop tokens of a completion: EOS, and each of ``strings`` as its token ids.

    A string the tokenizer cannot write (empty, or holding the unknown token) can never
    stop a completion and is left out.

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
            continue
        if len(ids) == 1:
            if ids[0] not in stop_ids:
                stop_ids.append(int(ids[0]))
        else:
            sequences.append([int(i) for i in ids])
    return stop_ids, sequences


# ---------------------------------------------------------------- the exact answer
def answer_token_probabilities(
    logits: Tensor, answer_ids: Tensor, temperature: float = 1.0
) -> Tensor:
    """The probability of each single-token answer, from the logits at the answer position.

    Parameters
    ----------
    logits : Tensor, shape (n_questions, vocab_size)
        The model's next-token logits right after ``<answer>`` (any float dtype).
    answer_ids : Tensor of int64, shape (n_answers,)
        Token id of each grid answer (:func:`single_token_answer_ids`).
    temperature : float, default 1.0
        The policy is ``softmax(logits / temperature)``.

    Returns
    -------
    Tensor of float64, shape (n_questions, n_answers), on ``logits``' device
        Rows sum to the probability of a valid answer (at most 1).
    """
    log_probs = torch.log_softmax(logits.float() / temperature, -1)
    return log_probs.index_select(-1, answer_ids.to(log_probs.device)).exp().double()


def exact_answers(probabilities: Tensor, grid: AnswerGrid) -> tuple[Tensor, Tensor]:
    """The answer distribution given a valid answer, and its mean ``q_exact``.

    ``q_exact = sum_k pi(k | answered) q_k`` with ``q_k = k / grid.scale``: the
    probability a policy states, without sampling noise.

    Parameters
    ----------
    probabilities : Tensor of float64, shape (n_questions, grid.size)
        :func:`answer_token_probabilities` (rows need not sum to 1).
    grid : AnswerGrid

    Returns
    -------
    distribution : Tensor of float64, shape (n_questions, grid.size)
        Each row divided by its sum.
    q_exact : Tensor of float64, shape (n_questions,)
    """
    distribution = probabilities / probabilities.sum(-1, keepdim=True)
    grid_probabilities = grid.probabilities(torch.float64).to(distribution.device)
    return distribution, distribution @ grid_probabilities


def prompt_spread(hidden: Tensor) -> float:
    """How much the model's state at the answer position depends on the prompt: the
    across-prompt root-mean-square deviation of the final hidden state, relative to its
    root-mean-square size,

        sqrt(mean_d Var_prompts(h_d)) / sqrt(mean_d mean_prompts(h_d^2)),

    0 when every prompt leads to the same state (the answer cannot depend on the
    question), up to 1 when the states are centred on 0.

    Parameters
    ----------
    hidden : Tensor, shape (n_prompts, hidden_size)
        The final hidden states at the answer position, one row per prompt.

    Returns
    -------
    float
        NaN for fewer than two prompts.
    """
    hidden = torch.as_tensor(hidden, dtype=torch.float64)
    if hidden.ndim != 2:
        shape = tuple(hidden.shape)
        raise ValueError(f"prompt_spread: hidden must be (n_prompts, hidden_size), got {shape}")
    if hidden.shape[0] < 2:
        return math.nan
    spread = hidden.var(0, unbiased=False).mean().sqrt()
    size = hidden.pow(2).mean().sqrt()
    return float(spread / size) if size > 0 else 0.0
