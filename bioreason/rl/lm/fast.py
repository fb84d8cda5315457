"""A lean forward pass of a transformers ``LlamaForCausalLM`` for grouped rollouts.

Small models spend most of a rollout step in per-operation overhead rather than in
arithmetic, and transformers' general forward (mask construction, cache objects, hooks,
output dataclasses, seven separate projections per layer) multiplies the operations.
:class:`FastLlama` computes the same function from the same parameters with fewer,
larger operations:

* the query, key and value projections are one matrix product (their weights are
  concatenated once per rollout, so the autograd graph splits the gradient once), and
  so are the MLP's gate and up projections;
* the rotary embedding is applied to queries and keys in one pass;
* the key/value cache is a plain list of tensors, and masks are built once per call.

With ``compile=True`` the decoder (every layer, the final norm and the LM head) runs
through ``torch.compile`` (inductor) while gradients are on: each layer's few dozen small
element-wise operations become a handful of generated kernels, forward and backward,
which is what a small model's step is made of on a CPU. Compiling takes a while
up front (once per process and input shape family), so it pays off for long runs only;
without gradients (evaluation) the decoder runs eagerly.

Positions, rotary embeddings (``model.model.rotary_emb``, so every RoPE variant of the
model is honoured), RMS norms and the attention scale are the model's own, and the
result equals the model's forward to float rounding (``tests/test_lm_fast.py`` checks
logits, hidden states, caches and gradients against it). Only the exact architecture is
accepted (:func:`fast_forward` returns None for anything else: a subclass, peft
wrappers, quantized or biased projections, activations other than SiLU, attention
dropout in training mode), so every other model takes transformers' path unchanged.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FastCache", "FastLlama", "FastOutput", "fast_forward"]


@dataclasses.dataclass
class FastCache:
    """Keys and values of every layer, shape (n, n_kv_heads, n_tokens, head_dim) each."""

    keys: list[Tensor]
    values: list[Tensor]

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every row ``repeats`` times in place of the cache (as transformers'
        ``Cache.batch_repeat_interleave``): rows ``i * repeats .. (i + 1) * repeats - 1``
        are copies of row ``i``."""
        self.keys = [k.repeat_interleave(repeats, 0) for k in self.keys]
        self.values = [v.repeat_interleave(repeats, 0) for v in self.values]

    def get_seq_length(self) -> int:
        """Tokens held (0 when empty)."""
        return int(self.keys[0].shape[2]) if self.keys else 0


@dataclasses.dataclass
class FastOutput:
    """What :class:`FastLlama` returns: the fields of transformers' output that the
    rollout code reads.

    Attributes
    ----------
    logits : Tensor, shape (n, n_positions, vocab_size)
        ``n_positions`` is 1 with ``last_only``.
    hidden_states : tuple of one Tensor, shape (n, n_tokens, hidden_size), or None
        The final normed hidden states (the LM head's input), when asked for.
    cache : FastCache or None
    """

    logits: Tensor
    hidden_states: tuple[Tensor] | None
    cache: FastCache | None


def _supported(model: torch.nn.Module) -> bool:
    try:
        from transformers import LlamaForCausalLM
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    if type(model) is not LlamaForCausalLM:
        return False
    config = model.config
    if getattr(config, "hidden_act", None) != "silu":
        return False
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return False
    if getattr(config, "pretraining_tp", 1) not in (None, 1):
        return False
    if model.training and getattr(config, "attention_dropout", 0.0):
        return False
    if getattr(model, "_hf_hook", None) is not None:  # accelerate offloading hooks
        return False
    base = model.model
    if type(model.lm_head) is not torch.nn.Linear or model.lm_head.bias is not None:
        return False
    for layer in base.layers:
        attn, mlp = layer.self_attn, layer.mlp
        linears = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj]
        linears += [mlp.gate_proj, mlp.up_proj, mlp.down_proj]
        if any(type(m) is not torch.nn.Linear or m.bias is not None for m in linears):
            return False
        if getattr(layer, "gradient_checkpointing", False):
            return False
    return True


def fast_forward(model: torch.nn.Module, compile: bool = False) -> FastLlama | None:
    """A :class:`FastLlama` for ``model``, or None when its architecture is not exactly
    a plain ``LlamaForCausalLM`` (the caller then uses the model's own forward).

    Parameters
    ----------
    compile : bool, default False
        Run the decoder through ``torch.compile`` while gradients are on (see
        the module docstring).

    Returns
    -------
    FastLlama or None
    """
    return FastLlama(model, compile=compile) if _supported(model) else None


def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    # transformers' LlamaRMSNorm: normalise in float32, scale in the input's dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def _layer(
    x: Tensor,
    cos: Tensor,
    sin: Tensor,
    mask: Tensor | None,
    past_k: Tensor | None,
    past_v: Tensor | None,
    weights: tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor],
    eps: tuple[float, float],
    shape: tuple[int, int, int],
    scale: float,
    causal: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """One decoder layer: (hidden state after it, keys, values including ``past``).

    ``weights``: input norm, fused QKV, output projection, post-attention norm, fused
    gate/up, down projection; ``shape``: (query heads, key/value heads, head dim);
    ``sin`` has its first half negated (so that ``rotate_half`` is a flip)."""
    w1, qkv_w, o_w, w2, gate_up_w, down_w = weights
    h, k_heads, d = shape
    n, n_new = x.shape[0], x.shape[1]
    half = d // 2
    qkv = F.linear(_rms_norm(x, w1, eps[0]), qkv_w).view(n, n_new, h + 2 * k_heads, d)
    qk, v = qkv.transpose(1, 2).split([h + k_heads, k_heads], 1)  # (n, heads, n_new, d)
    # rotate_half(qk) * sin == flip(halves of qk) * (sin with its first half negated)
    rotated = qk.unflatten(-1, (2, half)).flip(-2).flatten(-2)
    q, k = (qk * cos + rotated * sin).split([h, k_heads], 1)
    if past_k is not None:
        k = torch.cat([past_k, k], 2)
        v = torch.cat([past_v, v], 2)
    attn = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=h != k_heads
    )
    x = x + F.linear(attn.transpose(1, 2).reshape(n, n_new, h * d), o_w)
    gate, up = F.linear(_rms_norm(x, w2, eps[1]), gate_up_w).chunk(2, -1)
    x = x + F.linear(F.silu(gate) * up, down_w)
    return x, k, v


def _decoder(
    x: Tensor,
    cos: Tensor,
    sin: Tensor,
    mask: Tensor | None,
    past_keys: list[Tensor] | None,
    past_values: list[Tensor] | None,
    layers: list[tuple],
    final_norm: tuple[Tensor, float],
    lm_head: Tensor,
    shape: tuple[int, int, int],
    scale: float,
    causal: bool,
    last_only: bool,
) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
    """Every decoder layer, the final norm and the LM head: (logits, normed hidden
    states, keys, values); ``layers`` holds each layer's ``(weights, eps)`` for
    :func:`_layer`."""
    keys: list[Tensor] = []
    values: list[Tensor] = []
    for index, (weights, eps) in enumerate(layers):
        x, k, v = _layer(
            x,
            cos,
            sin,
            mask,
            past_keys[index] if past_keys is not None else None,
            past_values[index] if past_values is not None else None,
            weights,
            eps,
            shape,
            scale,
            causal,
        )
        keys.append(k)
        values.append(v)
    if last_only:
        x = x[:, -1:]
    normed = _rms_norm(x, *final_norm)
    return F.linear(normed, lm_head), normed, keys, values


@functools.cache
def _compiled_decoder():
    """``torch.compile(_decoder)``, made once per process (dynamo caches its graphs by
    the inputs' shapes and marks sizes dynamic after a second shape)."""
    return torch.compile(_decoder, dynamic=None)


class FastLlama:
    """Forward of a ``LlamaForCausalLM`` with a list cache (see the module docstring).

    Called like the model: ``fast(input_ids, attention_mask=, position_ids=, cache=,
    use_cache=, last_only=, hidden=)``; the weights are read at construction (build one
    per rollout: the concatenated projections are part of the autograd graph).
    ``compile=True``: the decoder runs through ``torch.compile`` while gradients are on.
    """

    def __init__(self, model: torch.nn.Module, compile: bool = False) -> None:
        config = model.config
        base = model.model
        self.model = model
        self.compile = bool(compile)
        self.n_heads = int(config.num_attention_heads)
        self.n_kv = int(getattr(config, "num_key_value_heads", None) or self.n_heads)
        self.head_dim = int(
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        self.scale = self.head_dim**-0.5
        self.embed = base.embed_tokens
        self.rotary = base.rotary_emb
        self.final_norm = (base.norm.weight, float(base.norm.variance_epsilon))
        self.lm_head = model.lm_head.weight
        self.layers = []
        for layer in base.layers[: config.num_hidden_layers]:
            attn, mlp = layer.self_attn, layer.mlp
            weights = (
                layer.input_layernorm.weight,
                torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),
                attn.o_proj.weight,
                layer.post_attention_layernorm.weight,
                torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]),
                mlp.down_proj.weight,
            )
            eps = (
                float(layer.input_layernorm.variance_epsilon),
                float(layer.post_attention_layernorm.variance_epsilon),
            )
            self.layers.append((weights, eps))

    def _mask(
        self, attention_mask: Tensor | None, n_new: int, past: int, device: torch.device
    ) -> Tensor | None:
        """Boolean attention mask (n or 1, 1, n_new, past + n_new), or None when plain
        causal attention over everything is right (no padding, one query, or no past)."""
        total = past + n_new
        if attention_mask is None and n_new == 1:
            return None
        query_at = torch.arange(past, total, device=device)[:, None]
        keys = torch.arange(total, device=device)[None, :]
        allowed = keys <= query_at  # (n_new, total)
        if attention_mask is None:
            return allowed[None, None]
        valid = attention_mask[:, None, None, :total].bool()
        # a padded query attends itself so that no row is empty (its output is unused)
        return (allowed[None, None] & valid) | (keys == query_at)[None, None]

    def __call__(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: FastCache | None = None,
        use_cache: bool = True,
        last_only: bool = False,
        hidden: bool = False,
    ) -> FastOutput:
        """The model's forward on ``input_ids`` (n, n_new), after ``cache``.

        Returns
        -------
        FastOutput
            Logits (all positions, or the last with ``last_only``), the final normed
            hidden states with ``hidden``, and with ``use_cache`` the cache: ``cache``
            itself, extended in place (as transformers' caches are), or a new one.
        """
        n, n_new = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        device = input_ids.device
        x = self.embed(input_ids)
        if position_ids is None:
            position_ids = torch.arange(past, past + n_new, device=device)[None, :]
        cos, sin = self.rotary(x, position_ids)
        cos, sin = cos[:, None], sin[:, None]  # (n or 1, 1, n_new, head_dim)
        half = self.head_dim // 2
        sin = torch.cat([-sin[..., :half], sin[..., half:]], -1)
        mask = self._mask(attention_mask, n_new, past, device)
        causal = mask is None and past == 0 and n_new > 1
        decoder = _compiled_decoder() if self.compile and torch.is_grad_enabled() else _decoder
        logits, normed, new_keys, new_values = decoder(
            x,
            cos,
            sin,
            mask,
            cache.keys if cache is not None else None,
            cache.values if cache is not None else None,
            self.layers,
            self.final_norm,
            self.lm_head,
            (self.n_heads, self.n_kv, self.head_dim),
            self.scale,
            causal,
            last_only,
        )
        if use_cache and cache is not None:  # extended in place, as transformers' caches
            cache.keys, cache.values = new_keys, new_values
        elif use_cache:
            cache = FastCache(new_keys, new_values)
        return FastOutput(
            logits=logits,
            hidden_states=(normed,) if hidden else None,
            cache=cache if use_cache else None,
        )
