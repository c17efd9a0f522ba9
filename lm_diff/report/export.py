"""Latent-browser export in the Neuronpedia dashboard batch layout (the ``batch-N.json`` files SAEDashboard's
Neuronpedia runner writes and Neuronpedia imports), so the latents open in the viewer people already use.

One folder per model of the crosscoder (``neuronpedia/<role>/batch-0.json``): a crosscoder latent has one decoder
direction per model, hence one set of output-token logits per model; the activations are shared. Layout
(docs/report_schema.md#neuronpedia-export)::

    {"model_id": str, "layer": int|str, "sae_set": "lm-diff-crosscoder", "features": [
       {"feature_index": int, "pos_str": [...], "pos_values": [...], "neg_str": [...], "neg_values": [...],
        "frac_nonzero": float, "freq_hist_data_bar_heights": [...], "freq_hist_data_bar_values": [...],
        "logits_hist_data_bar_heights": [], "logits_hist_data_bar_values": [],
        "activations": [{"bin_min", "bin_max", "bin_contains", "tokens", "values", "qualifying_token_index"}],
        "lm_diff": {"set", "categories", "delta_norm", "nu_eps", "nu_r", "decoder_norms"}}]}

The histogram arrays are parallel (one bar value, the bin centre, per height). Top windows carry ``bin_min = -1``
as in SAEDashboard's top-activation group; a quantile window carries its quantile index in ``bin_contains`` and its
own maximum as ``bin_min = bin_max`` (the quantile's bounds are not stored).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from lm_diff.io import write_text
from lm_diff.link.table import as_float as _f

__all__ = ["neuronpedia_batches", "write_neuronpedia"]

SAE_SET = "lm-diff-crosscoder"


def _activation(e: Mapping) -> dict:
    vals = [float(a) for a in e.get("acts") or []]
    toks = [str(t) for t in e.get("tokens") or []]
    if len(vals) != len(toks) or not toks:
        toks, vals = [str(e.get("text") or "")], [_f(e.get("act")) or 0.0]
    top = max(range(len(vals)), key=vals.__getitem__)
    if e.get("kind") == "quantile":
        m = vals[top]
        bins = {"bin_min": m, "bin_max": m, "bin_contains": float(e.get("quantile") or 0)}
    else:
        bins = {"bin_min": -1.0, "bin_max": -1.0, "bin_contains": -1.0}
    return {**bins, "tokens": toks, "values": vals, "qualifying_token_index": top}


def _feature(c: Mapping, role: str) -> dict:
    lg = (c.get("logits") or {}).get(role) or {}
    hist = c.get("act_hist") or {}
    edges, counts = hist.get("edges") or [], hist.get("counts") or []
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])] if len(edges) == len(counts) + 1 else []
    return {
        "feature_index": int(c["latent"]),
        "pos_str": [t for t, _ in lg.get("pos") or []], "pos_values": [float(v) for _, v in lg.get("pos") or []],
        "neg_str": [t for t, _ in lg.get("neg") or []], "neg_values": [float(v) for _, v in lg.get("neg") or []],
        "frac_nonzero": _f(c.get("density")) or 0.0,
        "freq_hist_data_bar_heights": [int(x) for x in counts] if centres else [],
        "freq_hist_data_bar_values": centres,
        "logits_hist_data_bar_heights": [], "logits_hist_data_bar_values": [],
        "activations": [_activation(e) for e in c.get("examples") or []],
        "lm_diff": {"set": c.get("set"), "categories": [e.get("category") for e in c.get("categories") or []],
                    "delta_norm": c.get("delta_norm"), "nu_eps": c.get("nu_eps"), "nu_r": c.get("nu_r"),
                    "decoder_norms": c.get("decoder_norms")},
    }


def neuronpedia_batches(report: Mapping) -> dict[str, dict]:
    """{model role: batch dict} for the report's latent cards (roles: the models with decoder norms or logits)."""
    cards = report.get("latent_cards") or []
    roles: list[str] = []
    for c in cards:
        for r in [*(c.get("decoder_norms") or {}), *(c.get("logits") or {})]:
            if r not in roles:
                roles.append(r)
    run = report.get("run") or {}
    models = run.get("models") or {}
    if not roles and cards:  # no per-model data recorded: one batch per model of the run, without output tokens
        roles = [r for r in ("A", "B") if models.get(r)] or ["B"]
    layer = (run.get("layers") or [None])[0]
    return {r: {"model_id": str(models.get(r) or r), "layer": layer, "sae_set": SAE_SET,
                "features": [_feature(c, r) for c in cards]} for r in roles}


def write_neuronpedia(report: dict, out_dir: Path) -> Path:
    """Writer ``neuronpedia``: ``neuronpedia/<role>/batch-0.json`` under ``out_dir``; returns the folder."""
    root = Path(out_dir) / "neuronpedia"
    root.mkdir(parents=True, exist_ok=True)
    for role, batch in neuronpedia_batches(report).items():
        (root / role).mkdir(exist_ok=True)
        write_text(root / role / "batch-0.json", json.dumps(batch, ensure_ascii=False))
    return root
