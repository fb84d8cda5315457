"""Load a causal LM and its tokenizer as a :class:`Predictor`: the default small model, a
``save_pretrained`` folder, or a Hugging Face hub name; optional LoRA adapters (peft).

Where a name leads:

- ``"tiny"`` (any preset name, or a preset's ``.yaml`` path): a new
  :func:`bioreason.lm.tiny_model`; its tokenizer is ``tokenizer=`` or is built from
  ``texts=`` with :func:`bioreason.lm.build_tokenizer`. An existing folder of that name
  wins over the preset.
- a folder: ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained(folder)``; a folder
  holding a peft adapter (``adapter_config.json``) loads its base model and the adapter.
- anything else is a hub name, looked up in the local Hugging Face cache first
  (``local_files_only``) and downloaded only when it is not there and the hub is
  allowed (``HF_HUB_OFFLINE`` unset). When neither works the error says how to point
  at a local copy.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from bioreason._device import resolve_device
from bioreason._io import _umask
from bioreason.lm.answer_protocol import AnswerGrid, resolve_grid
from bioreason.lm.answers import answer_distribution, expected_answer, sample_completions
from bioreason.lm.model import PRESET_DIR, tiny_model
from bioreason.lm.prompts import format_prompt
from bioreason.lm.tokenizer import answer_token_ids, build_tokenizer

__all__ = ["DEFAULT_LORA", "Predictor", "load_predictor"]

#: LoRA settings used unless ``lora=`` overrides them (peft ``LoraConfig`` fields)
DEFAULT_LORA: dict[str, Any] = {
    "r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "target_modules": "all-linear",
    "task_type": "CAUSAL_LM",
}
#: file in a saved predictor's folder with what the HF files do not hold (the grid)
PREDICTOR_FILE = "bioreason_predictor.json"
_LORA_HINT = "pip install 'bioreason[lora]' (or pip install 'peft>=0.12')"


@dataclass
class Predictor:
    """A causal LM, its tokenizer and the answer grid: what the LM trainer trains.

    Attributes
    ----------
    model : transformers.PreTrainedModel
        The causal LM (a ``peft.PeftModel`` when LoRA adapters are on).
    tokenizer : transformers.PreTrainedTokenizerBase
        Pads on the left; has a pad token (the EOS token when the checkpoint had none).
    grid : AnswerGrid
        The answers, default integers 1..99 (``q = K / 100``).
    answer_token_ids : list of int, or None
        The token id of each grid answer (length ``grid.size``) when every answer is
        one token right after ``<answer>``; None otherwise (then only sampled answers
        give q, not the exact distribution).
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    grid: AnswerGrid = field(default=None)  # type: ignore[assignment]
    answer_token_ids: list[int] | None = field(default=None)

    def __post_init__(self) -> None:
        self.grid = resolve_grid(self.grid, "Predictor")
        if self.answer_token_ids is None:
            self.answer_token_ids = answer_token_ids(self.tokenizer, self.grid)

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters."""
        return next(self.model.parameters()).device

    @property
    def is_lora(self) -> bool:
        """Whether the model carries peft adapters."""
        return hasattr(self.model, "peft_config")

    def format_prompt(self, question_text: str, *, open_answer: bool = False) -> str:
        """The text the model reads for a question (:func:`bioreason.lm.format_prompt`).

        With a chat template the question is a user message rendered with the template
        and its generation prompt; without one it is the question itself, to which the
        model answers ``<answer>K</answer><eos>``. ``open_answer=True`` also appends
        ``<answer>`` (the prompt then ends at the answer position). Idempotent.

        Returns
        -------
        str
        """
        return format_prompt(self.tokenizer, question_text, open_answer=open_answer)

    def answer_distribution(self, prompts: Iterable[str], normalize: bool = False) -> Tensor:
        """:func:`bioreason.lm.answer_distribution` of this model: Tensor of float64,
        shape (n_prompts, grid.size)."""
        return answer_distribution(
            self.model,
            self.tokenizer,
            list(prompts),
            self.grid,
            normalize=normalize,
            answer_ids=self.answer_token_ids,
        )

    def expected_answer(self, prompts: Iterable[str]) -> Tensor:
        """``q_exact`` per prompt (:func:`bioreason.lm.expected_answer`): Tensor of
        float64, shape (n_prompts,)."""
        return expected_answer(
            self.model, self.tokenizer, list(prompts), self.grid, answer_ids=self.answer_token_ids
        )

    def sample(self, prompts: Iterable[str], **options: Any) -> list[list[str]]:
        """Sampled completions (:func:`bioreason.lm.sample_completions`): list of list of
        str, shape (n_prompts, num_samples)."""
        return sample_completions(self.model, self.tokenizer, list(prompts), **options)

    def save(self, folder: str | Path, *, overwrite: bool = False, merge_lora: bool = True) -> Path:
        """Write the model and tokenizer (``save_pretrained``) and the grid to ``folder``.

        ``load_predictor(folder)`` reads it back. The folder is written whole or not at
        all (a temporary folder renamed into place).

        Parameters
        ----------
        overwrite
            Replace an existing, non-empty ``folder``; without it that raises.
        merge_lora
            A LoRA model is saved with its adapters merged into the weights (a plain
            model, loadable without peft; default); False saves only the adapters,
            which load on top of the base model that ``adapter_config.json`` names.

        Returns
        -------
        pathlib.Path
            The folder.
        """
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"Predictor.save: {folder} is a file, not a folder")
        if folder.is_dir() and any(folder.iterdir()) and not overwrite:
            raise FileExistsError(
                f"Predictor.save: {folder} exists and is not empty; pass overwrite=True to "
                "replace it, or choose another folder"
            )
        model = self.model
        if self.is_lora and merge_lora:
            model = copy.deepcopy(model).merge_and_unload()
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            model.save_pretrained(staging)
            self.tokenizer.save_pretrained(staging)
            grid = {"low": self.grid.low, "high": self.grid.high, "scale": self.grid.scale}
            (staging / PREDICTOR_FILE).write_text(json.dumps({"grid": grid}, indent=2) + "\n")
            # safetensors writes model.safetensors as 0600 (through a temporary file):
            # every file follows the umask like the project's other outputs
            mask = _umask()
            for path in staging.rglob("*"):
                path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)
            staging.chmod(0o777 & ~mask)
            if folder.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
                folder.rename(old / "previous")
                staging.rename(folder)
                shutil.rmtree(old, ignore_errors=True)
            else:
                staging.rename(folder)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return folder


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(
            f"load_predictor: unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16', "
            "'float16', 'auto' or a torch.dtype"
        )
    return resolved


def _dtype_option(dtype: torch.dtype | str | None) -> dict[str, Any]:
    """``dtype=`` for transformers >= 4.56, ``torch_dtype=`` before."""
    if dtype is None:
        return {}
    import transformers

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": dtype}


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Left padding and a pad token, which batched generation needs."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _is_preset(name: str) -> Path | None:
    """The preset file a name means: ``"tiny"`` or a path ending in .yaml/.yml."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        return path if path.is_file() else None
    if len(path.parts) == 1 and (PRESET_DIR / f"lm_{name}.yaml").is_file():
        return PRESET_DIR / f"lm_{name}.yaml"
    return None


def _looks_like_path(name: str) -> bool:
    """A name that cannot be a hub id (``org/name`` or ``name``) is a path."""
    return (
        name.startswith((".", "/", "~"))
        or "\\" in name
        or name.count("/") > 1
        or Path(name).suffix in (".yaml", ".yml")
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _not_found(name: str, reason: str) -> OSError:
    cache = os.environ.get("HF_HOME") or os.path.join("~", ".cache", "huggingface")
    return OSError(
        f"load_predictor: {name!r} is not a local folder, its files are not in the Hugging "
        f"Face cache (HF_HOME={cache}), and the hub cannot be reached ({reason}). Point at "
        "a local copy instead: a folder written by model.save_pretrained(DIR) and "
        "tokenizer.save_pretrained(DIR) (or Predictor.save(DIR)), then "
        "load_predictor(DIR); or download the model where there is internet "
        f"(huggingface-cli download {name}), copy that cache here and set HF_HOME to it "
        "(HF_HUB_OFFLINE=1 then keeps everything local)."
    )


def _from_pretrained(
    name: str,
    *,
    local_files_only: bool | None,
    tokenizer: PreTrainedTokenizerBase | None,
    trust_remote_code: bool,
    model_options: dict[str, Any],
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    options = {"trust_remote_code": trust_remote_code}

    def load(local: bool) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        loaded_tokenizer = tokenizer or AutoTokenizer.from_pretrained(
            name, local_files_only=local, **options
        )
        model = AutoModelForCausalLM.from_pretrained(
            name, local_files_only=local, **options, **model_options
        )
        return model, loaded_tokenizer

    if Path(name).is_dir():
        if not (Path(name) / "config.json").is_file():
            raise FileNotFoundError(
                f"load_predictor: {name} has no config.json; it is not a folder written by "
                "save_pretrained (or Predictor.save)"
            )
        return load(True)
    if _looks_like_path(name):
        raise FileNotFoundError(
            f"load_predictor: no folder {name}; give a folder written by save_pretrained "
            "(or Predictor.save), a hub name such as 'org/model', or 'tiny'"
        )
    try:
        return load(True)
    except OSError as err:
        cached_error = err
    offline = _offline() or local_files_only is True
    if offline:
        why = "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE=1"
        raise _not_found(name, why) from cached_error
    try:
        return load(False)
    except OSError as err:
        raise _not_found(name, f"{type(err).__name__}: {str(err).splitlines()[0]}") from err


def _load_adapter(
    folder: Path, *, device: torch.device, options: dict[str, Any]
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    peft = _import_peft("loading the LoRA adapter in " + str(folder))
    base_name = json.loads((folder / "adapter_config.json").read_text()).get(
        "base_model_name_or_path"
    )
    if not base_name:
        raise ValueError(
            f"load_predictor: {folder}/adapter_config.json names no base model "
            "(base_model_name_or_path); save the predictor with merge_lora=True instead"
        )
    base = load_predictor(base_name, device=device, **options)
    model = peft.PeftModel.from_pretrained(base.model, str(folder), is_trainable=True)
    has_tokenizer = (folder / "tokenizer_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(folder) if has_tokenizer else base.tokenizer
    return model, tokenizer


def _import_peft(purpose: str) -> Any:
    try:
        import peft
    except ImportError:
        raise ImportError(
            f"{purpose} needs the peft package, which is not installed: {_LORA_HINT}"
        ) from None
    return peft


def _apply_lora(model: PreTrainedModel, lora: dict[str, Any]) -> PreTrainedModel:
    if not isinstance(lora, dict):
        raise TypeError(
            f"load_predictor: lora must be a dict of peft LoraConfig fields, got {lora!r}"
        )
    peft = _import_peft("load_predictor(lora=...)")
    settings = {**DEFAULT_LORA, **lora}
    try:
        config = peft.LoraConfig(**settings)
    except TypeError as err:
        raise ValueError(f"load_predictor: bad lora settings {lora}: {err}") from None
    return peft.get_peft_model(model, config)


def _read_grid(folder: Path) -> AnswerGrid | None:
    path = folder / PREDICTOR_FILE
    if not path.is_file():
        return None
    try:
        return AnswerGrid(**json.loads(path.read_text())["grid"])
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(
            f"load_predictor: {path} is damaged ({err}); delete it or fix it"
        ) from None


def load_predictor(
    name_or_path: str | Path,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
    lora: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    tokenizer: PreTrainedTokenizerBase | None = None,
    texts: Iterable[str] | None = None,
    grid: AnswerGrid | None = None,
    seed: int = 0,
    local_files_only: bool | None = None,
    model_options: dict[str, Any] | None = None,
) -> Predictor:
    """Load (or, for ``"tiny"``, create) a causal LM and its tokenizer as a Predictor.

    Parameters
    ----------
    name_or_path
        ``"tiny"`` (a preset name, or a preset's ``.yaml`` path): a new small
        ``LlamaForCausalLM`` (:func:`bioreason.lm.tiny_model`). A folder: a
        ``save_pretrained`` / ``Predictor.save`` folder, or a peft adapter folder. Else a
        Hugging Face hub name, read from the local cache first.
    device
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda:1"``...
    dtype
        Weights' dtype (``"float32"``, ``"bfloat16"``, ``torch.float16``, ``"auto"``);
        None keeps the default (float32 for ``"tiny"``).
    lora
        Add fresh LoRA adapters with these peft ``LoraConfig`` settings over
        :data:`DEFAULT_LORA` (``{}`` for the defaults: rank 8 on every linear layer);
        needs the optional extra ``bioreason[lora]``.
    trust_remote_code
        Passed to ``from_pretrained`` (run code shipped with a hub model).
    tokenizer
        Use this tokenizer (required for ``"tiny"`` unless ``texts`` is given; for a
        folder or hub name it replaces the saved one).
    texts
        For ``"tiny"``: build a word-level tokenizer from these prompts.
    grid : AnswerGrid, optional
        The answers; default the grid saved by ``Predictor.save``, else 1..99.
    seed
        For ``"tiny"``: the initial weights' seed.
    local_files_only
        True never contacts the hub (like ``HF_HUB_OFFLINE=1``); None (default) tries
        the local cache first, then the hub.
    model_options
        More keyword arguments for ``AutoModelForCausalLM.from_pretrained``
        (``attn_implementation``, ``revision``...).

    Returns
    -------
    Predictor
        Model in eval mode on ``device``; tokenizer padding on the left.

    Raises
    ------
    ValueError
        ``"tiny"`` without ``tokenizer`` or ``texts``; a bad dtype or lora setting.
    FileNotFoundError
        A path that does not exist, or a folder without ``config.json``.
    OSError
        A hub name whose files are not on disk while the hub cannot be reached (the
        message says how to point at a local copy).
    ImportError
        ``lora=`` (or an adapter folder) without peft installed: ``pip install
        'bioreason[lora]'``.
    """
    if isinstance(name_or_path, Path):
        name = str(name_or_path)
    elif isinstance(name_or_path, str) and name_or_path.strip():
        name = name_or_path.strip()
    else:
        raise TypeError(
            f"load_predictor: name_or_path must be 'tiny', a folder or a hub name, got "
            f"{name_or_path!r}"
        )
    torch_device = resolve_device(device)
    torch_dtype = _dtype(dtype)
    if lora is not None:  # fail before loading anything large
        _import_peft("load_predictor(lora=...)")
    preset = _is_preset(name)
    folder = Path(name).expanduser()
    if preset is not None and folder.is_dir():
        warnings.warn(
            f"load_predictor: {name!r} is both a folder and a model preset; loading the "
            f"folder (to build the preset instead, pass its file {str(preset)!r})",
            stacklevel=2,
        )
        preset = None

    if preset is not None:
        if tokenizer is None:
            if texts is None:
                raise ValueError(
                    f"load_predictor({name!r}) builds a new model and needs its tokenizer: "
                    "pass tokenizer= (e.g. from build_tokenizer) or texts= (the task "
                    "prompts to build a word-level tokenizer from)"
                )
            tokenizer = build_tokenizer(texts, grid)
        model = tiny_model(tokenizer, preset, seed=seed)
        if torch_dtype not in (None, "auto"):
            model = model.to(torch_dtype)
    elif folder.is_dir() and (folder / "adapter_config.json").is_file():
        options = {
            "dtype": dtype,
            "trust_remote_code": trust_remote_code,
            "local_files_only": local_files_only,
            "model_options": model_options,
        }
        model, loaded = _load_adapter(folder, device=torch_device, options=options)
        tokenizer = tokenizer or loaded
    else:
        model, tokenizer = _from_pretrained(
            str(folder) if folder.is_dir() else name,
            local_files_only=local_files_only,
            tokenizer=tokenizer,
            trust_remote_code=trust_remote_code,
            model_options={**_dtype_option(torch_dtype), **(model_options or {})},
        )
    if grid is None and folder.is_dir():
        grid = _read_grid(folder)
    if lora is not None:
        model = _apply_lora(model, lora)
    model = model.to(torch_device).eval()
    return Predictor(model=model, tokenizer=_prepare_tokenizer(tokenizer), grid=grid)
