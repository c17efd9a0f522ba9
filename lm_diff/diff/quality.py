"""Quality gates (docs/method.md#quality-gates): reconstruction metrics on held-out tokens and spliced ΔCE / KL per model, for the
crosscoder(s) of the main seed, on held-out web-like and chat-like documents of the capture store."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lm_diff.capture.activations import tokenizer_prefix
from lm_diff.config import RunConfig
from lm_diff.diff.metrics import reconstruction_metrics, spliced_metrics
from lm_diff.models import load_models


def _heldout_batches(store: Any, index: list[dict], n_docs: int = 64, max_len: int = 128) -> dict[str, list[list[int]]]:
    """Token ids of held-out corpus documents (with the tokenizer's prefix), split into web-like and chat-like."""
    docs = [d for d in store.docs() if d.get("heldout")]
    if not docs:
        docs = store.docs()[-n_docs:]
    prefix = tokenizer_prefix(store.tokenizer)
    groups: dict[str, list[list[int]]] = {"web": [], "chat": []}
    for d in docs:
        kind = index[d["doc_id"]]["kind"] if d["doc_id"] < len(index) else "corpus"
        if kind != "corpus":
            continue
        g = "chat" if d.get("chat") else "web"
        if len(groups[g]) >= n_docs:
            continue
        ids = store.doc_token_ids(d["doc_id"])[: max_len - len(prefix)]
        if len(ids) >= 2:
            groups[g].append(prefix + list(ids))
    return {k: v for k, v in groups.items() if v}


def quality_metrics(cfg: RunConfig, pair: Any, store: Any, layer: int, diffs: dict, seed: int, index: list[dict],
                    loaded: dict) -> dict:
    """{"models": {role: {ev, fvu, l0, dead_fraction, rel_bias, delta_ce, kl}}, "crosscoders": {...}}."""
    if "models" not in loaded:
        loaded["models"], loaded["tokenizer"] = load_models(cfg, pair)
    models = loaded["models"]
    batches = _heldout_batches(store, index)
    out: dict[str, Any] = {"models": {}, "crosscoders": {}, "heldout_docs": {k: len(v) for k, v in batches.items()}}
    for name, by_seed in diffs.items():
        d = by_seed[seed]
        rec = reconstruction_metrics(d.cc, store, layer, d.models)
        per_model = {}
        for slot, m_index in enumerate(d.models):
            role = pair.names[m_index]
            row = {k: _at(v, slot) for k, v in rec.items()}
            # Dead = never fired on any captured token (the whole store), not only on the small held-out split.
            row["dead_fraction_heldout"] = row.get("dead_fraction")
            row["dead_fraction"] = float(d.table["dead"].astype(bool).mean())
            for group, seqs in batches.items():
                ce, kl = [], []
                for seq in seqs:
                    ids = torch.tensor([seq])
                    s = spliced_metrics(d.cc, [models[i] for i in d.models], ids, layer, slot)
                    ce.append(s["delta_ce"])
                    kl.append(s["kl"])
                row[f"delta_ce_{group}"] = float(np.mean(ce))
                row[f"kl_{group}"] = float(np.mean(kl))
            # No held-out corpus document (e.g. a capture of benchmark prompts only): ΔCE and KL are not measured,
            # and the report's gate says so (None), rather than the mean of nothing.
            for metric in ("delta_ce", "kl"):
                groups = [row[f"{metric}_{g}"] for g in batches]
                row[metric] = float(np.mean(groups)) if groups else None
            per_model[role] = row
            # The headline per-model numbers come from the crosscoder that contains the model as its fine-tune side
            # (direct: AB for both; anchored: PA for A, PB for B, P from PB).
            if role not in out["models"] or slot == 1:
                out["models"][role] = row
        out["crosscoders"][name] = per_model
    return out


def _at(v: Any, i: int) -> Any:
    if isinstance(v, (list, tuple)):
        return float(v[i]) if i < len(v) else None
    if hasattr(v, "shape") and getattr(v, "ndim", 0) == 1:
        return float(v[i])
    return float(v) if isinstance(v, (int, float, np.floating)) else v
