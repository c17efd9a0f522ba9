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
- ``model_fingerprint(spec, path, revision)`` identifies weights by content (local) or resolved commit (hub).
- ``model_sources(cfg, pair)`` / ``load_tokenizer(cfg, pair)``: the run's models as lazily loaded ``ModelSource``s
  and their shared tokenizer, so capture can keep one model resident at a time.

Modules: ``layers`` (layer discovery), ``checks`` (pair checks), ``fingerprint``; loading lives here.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from lm_diff.config import ModelsConfig, RunConfig
from lm_diff.errors import UserError
from lm_diff.models.checks import _tokenizer_differences, check_pair
from lm_diff.models.fingerprint import model_fingerprint
from lm_diff.models.layers import (
    decoder_layers,
    decoder_layers_path,
    hidden_size,
    layer_output,
    n_layers,
    resolve_layers,
)
from lm_diff.organisms import resolve_spec
from lm_diff.plugins.hookspecs import hookimpl
from lm_diff.plugins.manager import hook

__all__ = ["ModelSource", "Pair", "check_pair", "crosscoder_pairs", "decoder_layers", "decoder_layers_path",
           "hidden_size", "layer_count", "layer_output", "load_model", "load_models", "load_tokenizer", "model_fingerprint",
           "model_pair", "model_sources", "n_layers", "require_pair", "resolve_layers", "resolve_model_path"]

# ----------------------------------------------------------------------------------------------------------------------
# Loading


def load_model(spec: str, models_cfg: Any = None):
    """Load ``spec`` through the ``lm_diff_load_model`` hook; returns ``(model, tokenizer)`` with the model in eval mode.

    ``models_cfg`` is a ``ModelsConfig`` (or a ``RunConfig``; its ``.models`` is used); None = defaults.
    """
    if models_cfg is None:
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


def require_pair(cfg: RunConfig) -> None:
    """Refuse a config that names no model pair (no ``models:``): it would silently analyse the demo organisms."""
    if not cfg.models_given:
        raise UserError(f"{cfg.source or 'config'}: models is not set, so there is no pair to analyse; add "
                        "models: {base: BASE, finetuned: FINETUNED} (hub ids or local folders), or models: demo to "
                        "analyse the demo organisms (what lm-diff demo runs)")


def model_pair(cfg: RunConfig) -> Pair:
    require_pair(cfg)
    m = cfg.models
    if cfg.design == "anchored":
        specs, names = [m.anchor, m.base, m.finetuned], ["P", "A", "B"]
    else:
        specs, names = [m.base, m.finetuned], ["A", "B"]
    paths = [resolve_model_path(s) for s in specs]
    return Pair(specs, names, paths, [model_fingerprint(s, p, m.revision) for s, p in zip(specs, paths)])


def crosscoder_pairs(cfg: RunConfig, pair: Pair) -> dict[str, tuple[int, int]]:
    """Named crosscoders: direct {"AB": (0, 1)}; anchored {"PA": (0, 1), "PB": (0, 2)}."""
    i = pair.index
    if cfg.design == "anchored":
        return {"PA": (i["P"], i["A"]), "PB": (i["P"], i["B"])}
    return {"AB": (i["A"], i["B"])}


@dataclasses.dataclass
class ModelSource:
    """A model that is loaded only when needed (capture keeps one resident at a time)."""

    name: str
    """Label stored in the activation store (e.g. ``A``)."""
    load: Callable[[], Any]
    """Returns the loaded model (eval mode); called once per capture pass."""
    identity: Any
    """JSON-able identity of the weights (e.g. ``model_fingerprint``); part of the store's fingerprint."""


def model_sources(cfg: RunConfig, pair: Pair) -> list[ModelSource]:
    """The run's models as lazily loaded sources, in store order."""
    def loader(spec: str) -> Callable[[], Any]:
        return lambda: load_model(spec, cfg.models)[0]

    return [ModelSource(n, loader(str(p or s)), fp)
            for n, s, p, fp in zip(pair.names, pair.specs, pair.paths, pair.fingerprints)]


def load_tokenizer(cfg: RunConfig, pair: Pair) -> Any:
    """The shared tokenizer of the run's models, loaded without the weights; one UserError when they differ."""
    toks = []
    for s, p in zip(pair.specs, pair.paths):
        source = str(p or s)
        kwargs = {"trust_remote_code": bool(cfg.models.trust_remote_code)}
        if p is None:
            kwargs["revision"] = cfg.models.revision
        try:
            toks.append(AutoTokenizer.from_pretrained(source, **kwargs))
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load the tokenizer of {s!r}: {str(exc).splitlines()[0]}") from None
    labels = [f"{n} ({s})" for n, s in zip(pair.names, pair.specs)]
    problems = [f"{labels[0]} and {labels[i]} use different tokenizers: " + "; ".join(d)
                for i in range(1, len(toks)) if (d := _tokenizer_differences(toks[0], toks[i]))]
    if problems:
        raise UserError("cannot diff these models: " + ". ".join(problems) + ". A crosscoder needs identical token "
                        "ids: compare a fine-tune with the base model it was trained from.")
    return toks[0]


def _model_config(cfg: RunConfig, spec: str, path: Optional[Path]) -> Any:
    """A model's config.json (text part) alone, no weights; one UserError when it cannot be read."""
    kwargs: dict[str, Any] = {"trust_remote_code": bool(cfg.models.trust_remote_code)}
    if path is None:
        kwargs["revision"] = cfg.models.revision
    try:
        conf = AutoConfig.from_pretrained(str(path or spec), **kwargs)
    except (OSError, ValueError) as exc:
        hint = "; set models.trust_remote_code: true only if you trust this repo" if "trust_remote_code" in str(exc) else ""
        raise UserError(f"cannot read the config of {spec!r}: {str(exc).splitlines()[0]}{hint}") from None
    return conf.get_text_config() if hasattr(conf, "get_text_config") else conf


def _config_layers(conf: Any) -> Optional[int]:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(getattr(conf, key, None), int):
            return int(getattr(conf, key))
    return None


def layer_count(cfg: RunConfig, pair: Pair) -> int:
    """Decoder layers of the run's first model, from its config.json alone (for ``resolve_layers`` before loading)."""
    n = _config_layers(_model_config(cfg, pair.specs[0], pair.paths[0]))
    if n is None:
        raise UserError(f"the config of {pair.specs[0]!r} names no layer count (num_hidden_layers)")
    return n


def check_pair_early(cfg: RunConfig, pair: Pair) -> Any:
    """Every check a capture makes that needs no weights, before any benchmark runs: each model's config loads (path,
    hub cache, remote code), it is a causal LM, hidden sizes and layer counts agree, and the tokenizers are identical.
    Returns the shared tokenizer; one UserError lists what is wrong and the fix."""
    confs = [_model_config(cfg, s, p) for s, p in zip(pair.specs, pair.paths)]
    labels = [f"{n} ({s})" for n, s in zip(pair.names, pair.specs)]
    problems = []
    for label, conf in zip(labels, confs):
        archs = list(getattr(conf, "architectures", None) or [])
        if getattr(conf, "is_encoder_decoder", False) or (archs and not any("CausalLM" in a or "LMHead" in a
                                                                               for a in archs)):
            problems.append(f"{label} is not a causal language model (architectures: {', '.join(archs) or '?'})")
    sizes = [getattr(c, "hidden_size", None) or getattr(c, "n_embd", None) for c in confs]
    layers = [_config_layers(c) for c in confs]
    for i in range(1, len(confs)):
        if sizes[i] != sizes[0]:
            problems.append(f"{labels[0]} has hidden size {sizes[0]} but {labels[i]} has {sizes[i]}")
        if layers[i] != layers[0]:
            problems.append(f"{labels[0]} has {layers[0]} layers but {labels[i]} has {layers[i]}")
    if problems:
        raise UserError("cannot diff these models: " + "; ".join(problems) + ". A crosscoder needs a fine-tune and the "
                        "base model it was trained from (same architecture and tokenizer).")
    return load_tokenizer(cfg, pair)


def load_models(cfg: RunConfig, pair: Pair) -> tuple[list, Any]:
    loaded = [load_model(str(p or s), cfg.models) for s, p in zip(pair.specs, pair.paths)]
    models = [m for m, _ in loaded]
    toks = [t for _, t in loaded]
    check_pair(toks, models, names=[f"{n} ({s})" for n, s in zip(pair.names, pair.specs)])
    return models, toks[0]


# Built-in loader (hook ``lm_diff_load_model``)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def _dtype(name: str):
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


@hookimpl(trylast=True)
def lm_diff_load_model(spec, config):
    """Load ``spec`` as (AutoModelForCausalLM, AutoTokenizer); third-party loaders registered earlier win.

    ``models.device: auto`` loads with ``device_map="auto"`` (accelerate): the layers spread over the GPUs present.
    """
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
    placement = {"device_map": "auto"} if device == "auto" else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **placement, **kwargs)
    except (OSError, ValueError) as exc:
        where = "local directory" if path is not None else "hub id (is it cached? HF_HUB_OFFLINE may be set)"
        hint = "; set models.trust_remote_code: true only if you trust this repo" if "trust_remote_code" in str(exc) else ""
        raise UserError(f"cannot load model {spec!r} from {where}: {str(exc).splitlines()[0]}{hint}") from None
    if not placement:
        model.to(device)
    model.eval()
    return model, tokenizer

