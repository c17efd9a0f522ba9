"""Decoder-layer discovery and layer selection for HF causal LMs (see ``lm_diff.models``)."""

from __future__ import annotations

from typing import Any, Sequence

import torch.nn as nn

from lm_diff.errors import UserError

# Dotted attribute paths of the decoder-layer list, most common first.
_LAYER_PATHS = (
    "model.layers",
    "model.language_model.layers",
    "model.language_model.model.layers",
    "language_model.model.layers",
    "model.text_model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "transformer.blocks",
    "transformer.layers",
    "model.model.layers",  # peft / wrapped models
    "base_model.model.model.layers",
    "layers",
    "h",
)


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _text_config(model: Any) -> Any:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    get = getattr(cfg, "get_text_config", None)
    try:
        return get() if callable(get) else cfg
    except Exception:  # noqa: BLE001 - some remote-code configs break get_text_config
        return cfg


def _configured_layers(model: Any) -> int | None:
    cfg = _text_config(model)
    for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        v = getattr(cfg, key, None)
        if isinstance(v, int):
            return v
    return None


def decoder_layers_path(model: Any) -> str:
    """Dotted path (relative to ``model``) of its decoder-layer ``ModuleList``; UserError if none is found."""
    n = _configured_layers(model)
    for path in _LAYER_PATHS:
        try:
            mod = _get_path(model, path)
        except AttributeError:
            continue
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and (n is None or len(mod) == n):
            return path
    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and (n is None or len(mod) == n):
            if best is None or len(name) < len(best):  # the shallowest (text-model layers before vision towers)
                best = name
    if best:
        return best
    raise UserError(
        f"cannot find the decoder layers of {type(model).__name__}: none of {', '.join(_LAYER_PATHS[:6])}... holds a "
        f"ModuleList of {n} layers; load the model's causal-LM class (AutoModelForCausalLM) or register an "
        f"lm_diff_load_model plugin that returns one"
    )


def layer_output(out: Any) -> Any:
    """The hidden states of a decoder layer's forward output (transformers returns a tensor or a tuple whose first
    element is the hidden states, depending on the architecture and version)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def decoder_layers(model: Any):
    """The decoder-layer ``ModuleList`` of a HF causal LM (see ``decoder_layers_path``)."""
    return _get_path(model, decoder_layers_path(model))


def n_layers(model: Any) -> int:
    return len(decoder_layers(model))


def hidden_size(model: Any) -> int:
    """Residual-stream width d_model."""
    cfg = _text_config(model)
    for key in ("hidden_size", "n_embd", "d_model", "dim"):
        v = getattr(cfg, key, None)
        if isinstance(v, int):
            return v
    emb = model.get_input_embeddings()
    return int(emb.weight.shape[1])


def resolve_layers(layers_cfg: Sequence[int | str] | int | str, model: Any) -> list[int]:
    """Sorted unique decoder-layer indices: ``"middle"`` = floor(L/2); ``model`` may be a model or the layer count L."""
    total = model if isinstance(model, int) else n_layers(model)
    if isinstance(layers_cfg, (int, str)):
        layers_cfg = [layers_cfg]
    out = []
    for item in layers_cfg:
        if item == "middle":
            idx = total // 2
        elif isinstance(item, int) and not isinstance(item, bool):
            idx = item
        else:
            raise UserError(f"layers: {item!r} is not a layer; use integers in [0, {total - 1}] or 'middle'")
        if not 0 <= idx < total:
            raise UserError(
                f"layers: layer {idx} is out of range; the model has {total} decoder layers, so use 0..{total - 1} "
                f"(or 'middle' = {total // 2})"
            )
        out.append(idx)
    if not out:
        raise UserError("layers: name at least one layer (e.g. ['middle'])")
    return sorted(set(out))


