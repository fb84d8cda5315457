"""The default small causal LM: a transformers ``LlamaForCausalLM`` from a YAML preset.

Presets live in the repository's ``models/`` folder as ``lm_<name>.yaml``
(``models/lm_tiny.yaml``: 4 layers, hidden size 128, about 1 M parameters plus the
embeddings). A preset holds ``LlamaConfig`` fields; the vocabulary size and the
pad/bos/eos ids always come from the tokenizer.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from bioreason.config import read_yaml

__all__ = ["PRESET_DIR", "available_presets", "load_preset", "tiny_model"]

#: the folder of the ``lm_<name>.yaml`` presets
PRESET_DIR = Path(__file__).resolve().parents[2] / "models"

# Keys a preset may hold besides LlamaConfig's own: notes, and a legacy RoPE field that
# every transformers version accepts.
_EXTRA_KEYS = {"description", "architecture", "rope_theta"}
_FROM_TOKENIZER = {"vocab_size", "pad_token_id", "bos_token_id", "eos_token_id"}


def available_presets() -> list[str]:
    """Names of the presets in :data:`PRESET_DIR` (``["tiny", ...]``)."""
    return sorted(path.stem.removeprefix("lm_") for path in PRESET_DIR.glob("lm_*.yaml"))


def _config_keys() -> set[str]:
    parameters = inspect.signature(LlamaConfig.__init__).parameters
    return {name for name, p in parameters.items() if p.kind is not p.VAR_KEYWORD} - {"self"}


def load_preset(preset: str | Path | dict[str, Any] = "tiny") -> dict[str, Any]:
    """Read and check a model preset.

    Parameters
    ----------
    preset
        A preset name (``"tiny"`` reads ``models/lm_tiny.yaml``), the path of a YAML
        file, or the fields as a dict.

    Returns
    -------
    dict
        ``LlamaConfig`` keyword arguments (``description`` and ``architecture`` removed).

    Raises
    ------
    ValueError
        An unknown preset name (the message lists the presets), an unknown field, a
        field that comes from the tokenizer (``vocab_size``, ``*_token_id``), a
        non-positive size, or a hidden size that the number of heads does not divide.
    """
    if isinstance(preset, dict):
        fields, where = dict(preset), "model preset (dict)"
    else:
        path = Path(preset)
        is_name = isinstance(preset, str) and path.suffix not in (".yaml", ".yml")
        if is_name and len(path.parts) == 1:
            path = PRESET_DIR / f"lm_{preset}.yaml"
            if not path.is_file():
                raise ValueError(
                    f"unknown model preset {preset!r}; the presets are {available_presets()} "
                    f"(files lm_<name>.yaml in {PRESET_DIR}), or pass the path of a YAML file"
                )
        fields = read_yaml(path, what="model preset")
        where = f"model preset {path}"
        if fields is None:
            fields = {}
        if not isinstance(fields, dict):
            raise ValueError(f"{where}: expected a mapping of LlamaConfig fields")
    architecture = fields.pop("architecture", "llama")
    fields.pop("description", None)
    if architecture != "llama":
        raise ValueError(f"{where}: architecture must be 'llama', got {architecture!r}")
    given = _FROM_TOKENIZER & set(fields)
    if given:
        raise ValueError(
            f"{where}: {sorted(given)} come from the tokenizer; remove them from the preset"
        )
    unknown = sorted(set(fields) - _config_keys() - _EXTRA_KEYS)
    if unknown:
        raise ValueError(
            f"{where}: unknown field(s) {unknown}; a preset holds LlamaConfig fields "
            "(hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, ...)"
        )
    for name in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "max_position_embeddings",
    ):
        value = fields.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(f"{where}: {name} must be a positive integer, got {value!r}")
    heads = fields.get("num_attention_heads", 32)
    hidden = fields.get("hidden_size", 4096)
    if fields.get("head_dim") is None and hidden % heads:
        raise ValueError(
            f"{where}: hidden_size={hidden} is not a multiple of num_attention_heads={heads}"
        )
    kv_heads = fields.get("num_key_value_heads") or heads
    if heads % kv_heads:
        raise ValueError(
            f"{where}: num_attention_heads={heads} is not a multiple of "
            f"num_key_value_heads={kv_heads}"
        )
    return fields


def tiny_model(
    tokenizer: PreTrainedTokenizerBase,
    preset: str | Path | dict[str, Any] = "tiny",
    seed: int = 0,
) -> LlamaForCausalLM:
    """A small randomly initialised ``LlamaForCausalLM`` for ``tokenizer``.

    Parameters
    ----------
    tokenizer
        Gives the vocabulary size (``len(tokenizer)``) and the pad/bos/eos ids.
    preset
        See :func:`load_preset`; default ``models/lm_tiny.yaml``.
    seed
        Seeds the initial weights (the global torch random state is left as it was).

    Returns
    -------
    transformers.LlamaForCausalLM
        float32, on the CPU, in eval mode; save it with ``save_pretrained``.
    """
    fields = load_preset(preset)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **fields,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.eval()
