"""Loading model pairs and checking that they can be diffed.

- ``load_model(spec, models_cfg) -> (model, tokenizer)`` asks the ``lm_diff_load_model`` hook (first plugin that answers
  wins; the built-in one in ``lm_diff_load_model`` implementation at the end of this module handles local directories, hub ids and
  ``organisms://SIZE/NAME``).
- ``check_pair(tokenizers, models)`` refuses pairs that cannot share a crosscoder: different tokenizers (vocabulary,
  special tokens, or encodings), different hidden sizes, or different layer counts. One ``UserError`` lists every
  difference and the fix.
- ``resolve_layers(layers_cfg, model)`` turns ``["middle", 3]`` into sorted decoder-layer indices.
- ``decoder_layers(model)`` / ``decoder_layers_path(model)`` find the decoder-layer ``ModuleList`` for common
  architectures (Llama/Mistral/Qwen/Gemma/Gemma2 ``model.layers``, Gemma3 multimodal ``model.language_model.layers``,
  GPT-2 ``transformer.h``, GPT-NeoX ``gpt_neox.layers``, OPT ``model.decoder.layers``, ...), falling back to the
  largest ``ModuleList`` whose length equals the configured layer count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path
from typing import Any, Optional, Sequence

from lm_diff.config import RunConfig
from lm_diff.errors import UserError
from lm_diff.organisms import resolve_spec
from lm_diff.plugins.hookspecs import hookimpl

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
    import torch.nn as nn

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


# ----------------------------------------------------------------------------------------------------------------------
# Loading


def load_model(spec: str, models_cfg: Any = None):
    """Load ``spec`` through the ``lm_diff_load_model`` hook; returns ``(model, tokenizer)`` with the model in eval mode.

    ``models_cfg`` is a ``ModelsConfig`` (or a ``RunConfig``; its ``.models`` is used); None = defaults.
    """
    from lm_diff.plugins.manager import hook

    if models_cfg is None:
        from lm_diff.config import ModelsConfig

        models_cfg = ModelsConfig()
    models_cfg = getattr(models_cfg, "models", models_cfg)
    result = hook().lm_diff_load_model(spec=spec, config=models_cfg)
    if result is None:
        raise UserError(
            f"no plugin could load model {spec!r}; use a local model directory, a hub id (org/name), or "
            f"organisms://SIZE/NAME"
        )
    model, tokenizer = result
    model.eval()
    return model, tokenizer


# ----------------------------------------------------------------------------------------------------------------------
# Pair checks


def _name(model: Any, i: int) -> str:
    label = "ABCDEFGH"[i] if i < 8 else str(i)
    path = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", "")
    return f"{label} ({path})" if path else label


_SPECIAL_ATTRS = ("bos_token", "eos_token", "pad_token", "unk_token")
_PROBE = "Hello world! 123 <b>lm_diff</b>\n\tnaïve café — 東京"


def _tokenizer_differences(a: Any, b: Any) -> list[str]:
    diffs = []
    va, vb = a.get_vocab(), b.get_vocab()
    if va != vb:
        only_a = sorted(set(va) - set(vb))
        only_b = sorted(set(vb) - set(va))
        moved = sum(1 for t in set(va) & set(vb) if va[t] != vb[t])
        detail = [f"{len(va)} vs {len(vb)} tokens"]
        if only_a:
            detail.append(f"{len(only_a)} only in the first, e.g. {only_a[0]!r}")
        if only_b:
            detail.append(f"{len(only_b)} only in the second, e.g. {only_b[0]!r}")
        if moved:
            detail.append(f"{moved} shared tokens with different ids")
        diffs.append("vocabulary differs (" + "; ".join(detail) + ")")
    for attr in _SPECIAL_ATTRS:
        ta, tb = getattr(a, attr, None), getattr(b, attr, None)
        ia, ib = getattr(a, attr + "_id", None), getattr(b, attr + "_id", None)
        if (str(ta), ia) != (str(tb), ib):
            diffs.append(f"special token {attr} differs ({ta!r}={ia} vs {tb!r}={ib})")
    sa, sb = sorted(map(str, a.all_special_tokens)), sorted(map(str, b.all_special_tokens))
    if sa != sb and not any("special token" in d for d in diffs):
        diffs.append(f"special tokens differ ({sorted(set(sa) ^ set(sb))[:5]})")
    if not diffs:
        ea, eb = a(_PROBE)["input_ids"], b(_PROBE)["input_ids"]
        if list(ea) != list(eb):
            diffs.append("the same text encodes to different token ids (normaliser, pre-tokeniser or BOS handling differs)")
    return diffs


def check_pair(*args: Any, names: Sequence[str] | None = None) -> None:
    """Refuse model sets that cannot be diffed with one crosscoder.

    Call as ``check_pair(tokenizers, models)`` (two lists, any length >= 2) or ``check_pair(tokA, tokB, modelA, modelB)``.
    Raises one ``UserError`` that names every difference (tokenizer vocabulary / special tokens / encodings, hidden
    size, layer count) and the fix.
    """
    if len(args) == 2:
        tokenizers, models = list(args[0]), list(args[1])
    elif len(args) == 4:
        tokenizers, models = [args[0], args[1]], [args[2], args[3]]
    else:
        raise TypeError("check_pair(tokenizers, models) or check_pair(tokA, tokB, modelA, modelB)")
    if len(tokenizers) != len(models):
        raise TypeError("check_pair: need one tokenizer per model")
    labels = list(names) if names else [_name(m, i) for i, m in enumerate(models)]
    problems = []
    for i in range(1, len(models)):
        pair = f"{labels[0]} and {labels[i]}"
        tdiff = _tokenizer_differences(tokenizers[0], tokenizers[i])
        if tdiff:
            problems.append(f"{pair} use different tokenizers: " + "; ".join(tdiff))
        d0, di = hidden_size(models[0]), hidden_size(models[i])
        if d0 != di:
            problems.append(f"{pair} have different hidden sizes ({d0} vs {di})")
        l0, li = n_layers(models[0]), n_layers(models[i])
        if l0 != li:
            problems.append(f"{pair} have different numbers of decoder layers ({l0} vs {li})")
    if problems:
        raise UserError(
            "cannot diff these models: " + ". ".join(problems) + ". A crosscoder needs identical token ids and "
            "residual streams of the same shape: compare a fine-tune with the base model it was trained from (same "
            "tokenizer files, same architecture size), or use design: anchored with an anchor of the same family."
        )


# The models of a run


def model_fingerprint(spec: str, path: Optional[Path]) -> dict:
    """Identify a model by its spec and, for local directories, the content of its small files + weight sizes."""
    fp: dict[str, Any] = {"spec": spec}
    if path is None or not Path(path).is_dir():
        return fp
    h = hashlib.sha256()
    for f in sorted(Path(path).iterdir()):
        if not f.is_file():
            continue
        h.update(f.name.encode())
        size = f.stat().st_size
        h.update(str(size).encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), 2)
                h.update(fh.read())
    fp["content"] = h.hexdigest()[:16]
    return fp


def resolve_model_path(spec: str) -> Optional[Path]:
    """Local directory for a model spec (building organisms on demand); None for hub ids."""
    if spec.startswith("organisms://"):
        return Path(resolve_spec(spec))
    p = Path(spec).expanduser()
    return p.resolve() if p.exists() else None


@dataclasses.dataclass
class Pair:
    """The models of a run in store order: direct [A, B]; anchored [P, A, B]."""

    specs: list[str]
    names: list[str]
    paths: list[Optional[Path]]
    fingerprints: list[dict]

    @property
    def index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}


def model_pair(cfg: RunConfig) -> Pair:
    m = cfg.models
    if cfg.design == "anchored":
        specs, names = [m.anchor, m.base, m.finetuned], ["P", "A", "B"]
    else:
        specs, names = [m.base, m.finetuned], ["A", "B"]
    paths = [resolve_model_path(s) for s in specs]
    return Pair(specs, names, paths, [model_fingerprint(s, p) for s, p in zip(specs, paths)])


def crosscoder_pairs(cfg: RunConfig, pair: Pair) -> dict[str, tuple[int, int]]:
    """Named crosscoders: direct {"AB": (0, 1)}; anchored {"PA": (0, 1), "PB": (0, 2)}."""
    i = pair.index
    if cfg.design == "anchored":
        return {"PA": (i["P"], i["A"]), "PB": (i["P"], i["B"])}
    return {"AB": (i["A"], i["B"])}


def load_models(cfg: RunConfig, pair: Pair) -> tuple[list, Any]:
    loaded = [load_model(str(p or s), cfg.models) for s, p in zip(pair.specs, pair.paths)]
    models = [m for m, _ in loaded]
    toks = [t for _, t in loaded]
    check_pair(toks, models, names=[f"{n} ({s})" for n, s in zip(pair.names, pair.specs)])
    return models, toks[0]


# Built-in loader (hook ``lm_diff_load_model``)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def _dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


@hookimpl(trylast=True)
def lm_diff_load_model(spec, config):
    """Load ``spec`` as (AutoModelForCausalLM, AutoTokenizer); third-party loaders registered earlier win."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = getattr(config, "models", config)
    dtype = _dtype(getattr(cfg, "dtype", "float32"))
    device = getattr(cfg, "device", "cpu")
    trust = bool(getattr(cfg, "trust_remote_code", False))
    revision = None
    spec = str(spec)
    if spec.startswith("organisms://"):
        path = Path(resolve_spec(spec))
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            if spec.startswith((".", "/", "~")) or not _HUB_ID.match(spec):
                raise UserError(f"model {spec!r}: no such directory; pass an existing local model directory, a hub id "
                                f"(org/name) or organisms://SIZE/NAME")
            path = None
            revision = getattr(cfg, "revision", None)
    source = str(path) if path is not None else spec
    kwargs = {"revision": revision, "trust_remote_code": trust} if path is None else {"trust_remote_code": trust}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except (OSError, ValueError) as exc:
        where = "local directory" if path is not None else "hub id (is it cached? HF_HUB_OFFLINE may be set)"
        hint = "; set models.trust_remote_code: true only if you trust this repo" if "trust_remote_code" in str(exc) else ""
        raise UserError(f"cannot load model {spec!r} from {where}: {str(exc).splitlines()[0]}{hint}") from None
    model.to(device)
    model.eval()
    return model, tokenizer
