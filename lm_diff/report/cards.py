"""Latent cards for the report's latent browser (``report["latent_cards"]``, docs/report_schema.md#latent-cards).

A card joins one selected latent's row of the per-latent table (Δnorm, ν^ε, ν^r, decoder norms) with its record from
the examples stage (examples with per-token activations, activation histogram, output tokens per model) and its
grounding evidence. A card without examples says why (``no_examples``).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import pandas as pd

from lm_diff.link.table import as_float as _f
from lm_diff.link.table import clean as _clean
from lm_diff.link.table import records as _records

__all__ = ["latent_cards"]

_TABLE_COLS = ("delta_norm", "nu_eps", "nu_r", "category", "set", "freq", "max_act", "mean_act", "tag", "norm_A", "norm_B",
               "norm_P")
_RECORD_KEYS = ("max_act", "n_active", "n_tokens", "act_hist", "decoder_norms", "logits", "mean_act", "categories")


def _example(e: Any) -> dict:
    if not isinstance(e, Mapping):
        return {"text": str(e), "act": None, "tokens": [], "acts": []}
    tokens, acts = list(e.get("tokens") or []), [_f(a) or 0.0 for a in e.get("acts") or []]
    if len(tokens) != len(acts):
        tokens, acts = [], []
    return {"kind": e.get("kind"), "quantile": e.get("quantile"), "text": str(e.get("text") or "".join(tokens)),
            "act": _f(e.get("act")), "tokens": tokens, "acts": acts}


def _why_none(card: Mapping) -> str:
    n_act, n_tok = _f(card.get("n_active")), _f(card.get("n_tokens"))
    if n_act == 0 and n_tok:
        return f"never active on the {int(n_tok)} captured tokens scanned"
    if n_tok is None:
        return "the examples stage did not record this latent (rerun the run to refresh the examples stage)"
    return "no activating window was recorded"


def latent_cards(cards: Any, latents: Optional[pd.DataFrame], n_examples: Optional[int] = None) -> list[dict]:
    """Cards in the given order: ``cards`` rows ({latent, set, examples, ...examples-stage fields}) completed from the
    per-latent table ``latents`` (rows keyed by (latent, set))."""
    info: dict = {}
    if latents is not None and len(latents) and "latent" in latents.columns:
        keep = [c for c in _TABLE_COLS if c in latents.columns]
        for r in latents[["latent", *[c for c in keep if c != "latent"]]].to_dict("records"):
            info[(int(r["latent"]), _clean(r.get("set")))] = {k: _clean(r[k]) for k in keep}
    out = []
    for c in _records(cards):
        key = (int(c["latent"]), c.get("set"))
        base = dict(info.get(key) or info.get((key[0], None)) or {})
        base.update({k: v for k, v in c.items() if v is not None and k != "examples"})
        ex = [_example(e) for e in c.get("examples") or []]
        base["examples"] = ex[:n_examples] if n_examples else ex
        if not base.get("decoder_norms"):
            base["decoder_norms"] = {m: base[f"norm_{m}"] for m in ("P", "A", "B") if _f(base.get(f"norm_{m}")) is not None}
        n_act, n_tok = _f(base.get("n_active")), _f(base.get("n_tokens"))
        base["density"] = n_act / n_tok if n_act is not None and n_tok else None
        for k in ("delta_norm", "nu_eps", "nu_r", "category", "set", *_RECORD_KEYS):
            base.setdefault(k, None)
        if base.get("category") is None and base.get("categories"):
            base["category"] = base["categories"][0].get("category")
        base["no_examples"] = None if any(e["tokens"] or e["text"] for e in base["examples"]) else _why_none(base)
        out.append(_clean(base))
    return out
