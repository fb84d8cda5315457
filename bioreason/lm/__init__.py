"""Language models for probability answers: the answer protocol (grid, parsers, answer
and stop tokens, the exact answer), a word-level tokenizer for task prompts, the default
small causal LM (``models/lm_tiny.yaml``), loading any Hugging Face causal LM (folder or
hub, optional LoRA), prompt formatting, the exact answer distribution at the answer
position, sampled completions, and a supervised warm start of the answer format.

Depends on transformers and tokenizers (peft for LoRA, optional), and on no other
project package. The names below load on first use: ``import bioreason.lm`` (and the
answer protocol, :mod:`bioreason.lm.answer_protocol`, which needs torch only) does not
import transformers, so the RL package's tabular side never pays for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the submodule that defines it
_EXPORTS = {
    "ANSWER_PARSERS": "answer_protocol",
    "AnswerGrid": "answer_protocol",
    "ParsedAnswers": "answer_protocol",
    "answer_token_probabilities": "answer_protocol",
    "exact_answers": "answer_protocol",
    "parse_answers": "answer_protocol",
    "parse_first_integer": "answer_protocol",
    "prompt_spread": "answer_protocol",
    "single_token_answer_ids": "answer_protocol",
    "stop_token_sequences": "answer_protocol",
    "answer_distribution": "answers",
    "answer_position_spread": "answers",
    "expected_answer": "answers",
    "sample_completions": "answers",
    "stop_token_ids": "answers",
    "PRESET_DIR": "model",
    "available_presets": "model",
    "load_preset": "model",
    "tiny_model": "model",
    "DEFAULT_LORA": "predictor",
    "Predictor": "predictor",
    "load_predictor": "predictor",
    "encode_prompts": "prompts",
    "format_prompt": "prompts",
    "has_chat_template": "prompts",
    "position_ids": "prompts",
    "ANSWER_CLOSE": "tokenizer",
    "ANSWER_OPEN": "tokenizer",
    "SPECIAL_TOKENS": "tokenizer",
    "answer_token_ids": "tokenizer",
    "build_tokenizer": "tokenizer",
    "warm_start": "supervised",
}

__all__ = [
    "ANSWER_CLOSE",
    "ANSWER_OPEN",
    "ANSWER_PARSERS",
    "AnswerGrid",
    "DEFAULT_LORA",
    "PRESET_DIR",
    "ParsedAnswers",
    "Predictor",
    "SPECIAL_TOKENS",
    "answer_distribution",
    "answer_position_spread",
    "answer_token_ids",
    "answer_token_probabilities",
    "available_presets",
    "build_tokenizer",
    "encode_prompts",
    "exact_answers",
    "expected_answer",
    "format_prompt",
    "has_chat_template",
    "load_predictor",
    "load_preset",
    "parse_answers",
    "parse_first_integer",
    "position_ids",
    "prompt_spread",
    "sample_completions",
    "single_token_answer_ids",
    "stop_token_ids",
    "stop_token_sequences",
    "tiny_model",
    "warm_start",
]

if TYPE_CHECKING:  # what static tools (type checkers, the API docs) read
    from bioreason.lm.answer_protocol import (
        ANSWER_PARSERS,
        AnswerGrid,
        ParsedAnswers,
        answer_token_probabilities,
        exact_answers,
        parse_answers,
        parse_first_integer,
        prompt_spread,
        single_token_answer_ids,
        stop_token_sequences,
    )
    from bioreason.lm.answers import (
        answer_distribution,
        answer_position_spread,
        expected_answer,
        sample_completions,
        stop_token_ids,
    )
    from bioreason.lm.model import PRESET_DIR, available_presets, load_preset, tiny_model
    from bioreason.lm.predictor import DEFAULT_LORA, Predictor, load_predictor
    from bioreason.lm.prompts import (
        encode_prompts,
        format_prompt,
        has_chat_template,
        position_ids,
    )
    from bioreason.lm.supervised import warm_start
    from bioreason.lm.tokenizer import (
        ANSWER_CLOSE,
        ANSWER_OPEN,
        SPECIAL_TOKENS,
        answer_token_ids,
        build_tokenizer,
    )


def __getattr__(name: str) -> Any:
    """Import a public name's submodule on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bioreason.lm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"bioreason.lm.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
