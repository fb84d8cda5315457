"""A word-level tokenizer for task prompts, and which token ids the grid's answers are.

:func:`build_tokenizer` counts the words of a task table's prompts and builds a
``tokenizers`` WordLevel model wrapped as a :class:`transformers.PreTrainedTokenizerFast`
(``save_pretrained`` / ``AutoTokenizer.from_pretrained`` round trip). Words are runs of
letters, digits and ``_``; every other non-space character is a word of its own; the
tags ``<answer>`` and ``</answer>`` stay whole, so ``<answer>42</answer>`` is the three
tokens ``<answer>``, ``42``, ``</answer>``. Every answer of the grid is one token, so
the probability of each answer is one softmax entry at the answer position
(:func:`bioreason.lm.answer_distribution`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from bioreason.lm.answer_protocol import (
    AnswerGrid,
    grid_answers,
    resolve_grid,
    single_token_answer_ids,
)

__all__ = [
    "ANSWER_CLOSE",
    "ANSWER_OPEN",
    "SPECIAL_TOKENS",
    "answer_token_ids",
    "build_tokenizer",
]

ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"
#: pad, beginning and end of sequence, unknown word; ids 0..3 in this order
SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<bos>", "eos": "<eos>", "unk": "<unk>"}

# The answer tags first (so that "<answer>" is not "<", "answer", ">"), then words, then
# single punctuation characters; whitespace separates and is dropped.
_WORD = Regex(r"</?answer>|\w+|[^\w\s]")


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Split(_WORD, behavior="removed", invert=True)


def build_tokenizer(
    texts: Iterable[str],
    grid: AnswerGrid | None = None,
    min_frequency: int = 1,
    *,
    max_vocab_size: int | None = None,
    padding_side: str = "left",
) -> PreTrainedTokenizerFast:
    """Build a word-level tokenizer from prompts (a task table's ``prompt`` column).

    Parameters
    ----------
    texts
        The texts whose words make the vocabulary (an iterable of strings, e.g. a
        pandas Series).
    grid : AnswerGrid, optional
        The answers that must be single tokens; default integers 1..99.
    min_frequency
        A word seen fewer times than this maps to ``<unk>``.
    max_vocab_size
        Keep at most this many tokens (the special tokens, the answer tags and the
        grid's answers always stay; the most frequent words fill the rest).
    padding_side
        ``"left"`` (default; batched generation with a causal LM pads on the left) or
        ``"right"``.

    Returns
    -------
    transformers.PreTrainedTokenizerFast
        Ids: ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3, ``<answer>`` 4,
        ``</answer>`` 5, then the grid's answers in order, then words by decreasing
        count (ties alphabetical). Encoding prepends ``<bos>`` (``add_special_tokens``);
        unseen words become ``<unk>``; decoding joins tokens with spaces
        (``"<answer> 42 </answer>"``, which :func:`bioreason.lm.parse_answers` reads).

    Raises
    ------
    TypeError
        ``texts`` is a single string or holds something that is not a string.
    ValueError
        ``min_frequency`` < 1, ``max_vocab_size`` too small for the fixed tokens, or a
        bad ``padding_side``.
    """
    where = "build_tokenizer"
    grid = resolve_grid(grid, where)
    if isinstance(texts, str):
        raise TypeError(f"{where}: texts must be an iterable of strings, got a single string")
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"{where}: min_frequency must be an integer >= 1, got {min_frequency!r}")
    if padding_side not in ("left", "right"):
        raise ValueError(f"{where}: padding_side must be 'left' or 'right', got {padding_side!r}")
    try:
        iterator = iter(texts)
    except TypeError:
        raise TypeError(
            f"{where}: texts must be an iterable of strings, got {type(texts).__name__}"
        ) from None

    fixed = [*SPECIAL_TOKENS.values(), ANSWER_OPEN, ANSWER_CLOSE, *grid_answers(grid)]
    if max_vocab_size is not None and max_vocab_size < len(fixed):
        raise ValueError(
            f"{where}: max_vocab_size={max_vocab_size} is smaller than the {len(fixed)} tokens "
            "that are always kept (special tokens, answer tags, the grid's answers)"
        )

    splitter = _pre_tokenizer()
    counts: Counter[str] = Counter()
    for index, text in enumerate(iterator):
        if not isinstance(text, str):
            raise TypeError(f"{where}: texts[{index}] is {type(text).__name__}, not a string")
        for special in SPECIAL_TOKENS.values():  # encoding reads these whole, before words
            text = text.replace(special, " ")
        counts.update(word for word, _ in splitter.pre_tokenize_str(text))

    known = set(fixed)
    words = sorted(
        (word for word, count in counts.items() if count >= min_frequency and word not in known),
        key=lambda word: (-counts[word], word),
    )
    if max_vocab_size is not None:
        words = words[: max_vocab_size - len(fixed)]
    vocab = {token: index for index, token in enumerate([*fixed, *words])}

    backend = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL_TOKENS["unk"]))
    backend.pre_tokenizer = _pre_tokenizer()
    bos = SPECIAL_TOKENS["bos"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab[bos])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=SPECIAL_TOKENS["pad"],
        bos_token=bos,
        eos_token=SPECIAL_TOKENS["eos"],
        unk_token=SPECIAL_TOKENS["unk"],
        padding_side=padding_side,
    )


def answer_token_ids(
    tokenizer: PreTrainedTokenizerBase, grid: AnswerGrid | None = None, prefix: str = ANSWER_OPEN
) -> list[int] | None:
    """The token id of each grid answer when every answer is one token, else None.

    An answer ``K`` counts as one token when encoding ``prefix + K`` (or ``prefix + " " +
    K``) gives the tokens of ``prefix`` (default ``"<answer>"``) plus exactly one more,
    that token is not the unknown token and decodes to ``K``, and no two answers share a
    token: then the probability of answer ``K`` right after the prefix is one softmax
    entry. The rule is :func:`bioreason.lm.answer_protocol.single_token_answer_ids`,
    which the RL trainer uses too.

    Returns
    -------
    list of int, length ``grid.size``, or None
        None when some answer is several tokens (typical of BPE and SentencePiece
        tokenizers that split numbers into digits).
    """
    grid = resolve_grid(grid, "answer_token_ids")
    return single_token_answer_ids(tokenizer, grid, prefix)
