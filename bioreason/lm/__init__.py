"""Language models for probability answers: a word-level tokenizer for task prompts, the
default small causal LM (``models/lm_tiny.yaml``), loading any Hugging Face causal LM
(folder or hub, optional LoRA), prompt formatting, the exact answer distribution at the
answer position, sampled completions, and a supervised warm start of the answer format.

Depends on transformers and tokenizers (peft for LoRA, optional); imports
:mod:`bioreason.rl` only inside functions, for the default answer grid.
"""

from bioreason.lm.answers import (
    answer_distribution,
    expected_answer,
    sample_completions,
    stop_token_ids,
)
from bioreason.lm.model import PRESET_DIR, available_presets, load_preset, tiny_model
from bioreason.lm.predictor import DEFAULT_LORA, Predictor, load_predictor
from bioreason.lm.prompts import encode_prompts, format_prompt, has_chat_template, position_ids
from bioreason.lm.tokenizer import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    SPECIAL_TOKENS,
    answer_token_ids,
    build_tokenizer,
)
from bioreason.lm.warm_start import warm_start

__all__ = [
    "ANSWER_CLOSE",
    "ANSWER_OPEN",
    "DEFAULT_LORA",
    "PRESET_DIR",
    "SPECIAL_TOKENS",
    "Predictor",
    "answer_distribution",
    "answer_token_ids",
    "available_presets",
    "build_tokenizer",
    "encode_prompts",
    "expected_answer",
    "format_prompt",
    "has_chat_template",
    "load_predictor",
    "load_preset",
    "position_ids",
    "sample_completions",
    "stop_token_ids",
    "tiny_model",
    "warm_start",
]
