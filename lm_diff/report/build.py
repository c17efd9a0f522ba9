"""The combined report: a versioned JSON-able dict (schema ``lm_diff.report/v2``, see docs/report_schema.md).

``build_report(...)`` assembles the dict from the stage outputs (the link stage's category rows, the score gaps, the
quality metrics, controls, latents and cards); it only arranges and annotates, it computes no linkage.
Writers live in :mod:`lm_diff.report.writers`, the Markdown and terminal views in :mod:`lm_diff.report.markdown`
and :mod:`lm_diff.report.terminal`. Quality gates come first everywhere.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from lm_diff import __version__
from lm_diff.bench.probes import is_probe_task
from lm_diff.categorize.taxonomy import get_taxonomy
from lm_diff.config import GatesConfig
from lm_diff.errors import UserError
from lm_diff.link.table import as_float as _f
from lm_diff.link.table import clean as _clean
from lm_diff.link.table import records as _records
from lm_diff.plugins.manager import hook
from lm_diff.report.cards import latent_cards
from lm_diff.report.markdown import to_markdown
from lm_diff.report.summary import build_summary
from lm_diff.report.writers import write_report

__all__ = ["SCHEMA", "build_report", "quality_section", "latent_summary", "selection_counts", "seed_signs",
           "collect_sections", "to_markdown", "write_report"]

SCHEMA = "lm_diff.report/v2"

def _cfg_get(config: Any, dotted: str, default: Any = None) -> Any:
    obj = config
    for part in dotted.split("."):
        if obj is None:
            return default
        obj = obj.get(part) if isinstance(obj, Mapping) else getattr(obj, part, None)
    return default if obj is None else obj


# ----------------------------------------------------------------------------------------------------------------------
# Quality gates


def quality_section(quality: Optional[Mapping], gates_cfg: Any = None, controls: Optional[Mapping] = None) -> dict:
    """Per-model EV, L0, dead fraction, spliced ΔCE/KL and the gate verdicts (methods B1).

    ``quality``: {"models": {"A": {ev, fvu, l0, dead_fraction, delta_ce, kl, rel_bias}, "B": {...}}, ...other keys kept}.
    A failing gate (or a failed identity control) sets ``low_confidence``; without quality metrics
    (benchmarks-only report) ``available`` is False and ``low_confidence`` is None.
    """
    g = gates_cfg or GatesConfig()
    if not quality or not quality.get("models"):
        return {"available": False, "models": {}, "gates": [], "passed": None, "low_confidence": None}
    models = {str(k): {kk: _clean(vv) for kk, vv in (v or {}).items()} for k, v in quality["models"].items()}
    gates = []
    spec = [("ev", ">=", _cfg_get(g, "ev_min")), ("delta_ce", "<=", _cfg_get(g, "delta_ce_max")), ("dead_fraction", "<=", _cfg_get(g, "dead_max"))]
    for m, vals in models.items():
        for metric, op, thr in spec:
            if thr is None:
                continue
            v = _f(vals.get(metric))
            if v is None:
                gates.append({"model": m, "metric": metric, "op": op, "threshold": thr, "value": None, "passed": None})
                continue
            ok = v >= thr if op == ">=" else v <= thr
            gates.append({"model": m, "metric": metric, "op": op, "threshold": thr, "value": v, "passed": bool(ok)})
    ident = (controls or {}).get("identity") if isinstance(controls, Mapping) else None
    if isinstance(ident, Mapping) and "passed" in ident:
        gates.append({"model": "A,A", "metric": "identity_control", "op": "==", "threshold": "pass",
                      "value": ident.get("specific_latents"), "passed": bool(ident["passed"])})
    verdicts = [x["passed"] for x in gates if x["passed"] is not None]
    passed = all(verdicts) if verdicts else None
    extra = {k: _clean(v) for k, v in quality.items() if k != "models"}
    return {"available": True, "models": models, "gates": gates, "passed": passed,
            "low_confidence": (not passed) if passed is not None else True, **extra}



def _planted_map(organism: Optional[Mapping]) -> dict[str, Any]:
    """Category -> planted info from an organism manifest ({"planted": [cat, ...] | {cat: sign|desc|dict}})."""
    if not organism:
        return {}
    p = organism.get("planted", organism.get("categories"))
    if isinstance(p, str):
        return {p: {}}
    if isinstance(p, (list, tuple)):
        out = {}
        for x in p:
            if isinstance(x, Mapping) and "category" in x:
                out[str(x["category"])] = {k: v for k, v in x.items() if k != "category"}
            else:
                out[str(x)] = {}
        return out
    if isinstance(p, Mapping):
        return {str(k): (dict(v) if isinstance(v, Mapping) else {"expected": v}) for k, v in p.items()}
    return {}


def _planted_sign(info: Any) -> int:
    """+1 / −1 / 0 from a planted entry ({"expected": ±1|0}, {"sign": ...}, a bare number); 1 for a bare listing."""
    if info is None:
        return 0
    v = info.get("expected", info.get("sign", 1)) if isinstance(info, Mapping) else info
    try:
        return int(np.sign(float(v)))
    except (TypeError, ValueError):
        return 1


# ----------------------------------------------------------------------------------------------------------------------
# Latents, cards, selection counts


def latent_summary(latents: Optional[pd.DataFrame], diff_cfg: Any = None, bins: int = 20) -> dict:
    """Histogram of Δnorm and the ν scatter points used by the plots."""
    if latents is None or len(latents) == 0:
        return {"n_latents": 0, "delta_norm_hist": None, "nu_points": []}
    out: dict[str, Any] = {"n_latents": int(len(latents))}
    if "delta_norm" in latents.columns:
        d = latents["delta_norm"].to_numpy(dtype=float)
        d = d[np.isfinite(d)]
        counts, edges = np.histogram(d, bins=bins, range=(0.0, 1.0))
        out["delta_norm_hist"] = {"edges": edges.round(4).tolist(), "counts": counts.tolist(),
                                  "thresholds": [_cfg_get(diff_cfg, "base_only", 0.1), _cfg_get(diff_cfg, "fine_tune_only", 0.9)]}
    else:
        out["delta_norm_hist"] = None
    pts = []
    if {"nu_eps", "nu_r"} <= set(latents.columns):
        sub = latents.dropna(subset=["nu_eps", "nu_r"])
        for _, r in sub.iterrows():
            pts.append({"latent": int(r["latent"]), "nu_eps": _f(r["nu_eps"]), "nu_r": _f(r["nu_r"]),
                        "set": _clean(r.get("set")), "selected": bool(r.get("selected", False))})
    out["nu_points"] = pts
    out["nu_thresholds"] = {"nu_eps_max": _cfg_get(diff_cfg, "nu_eps_max", 0.2), "nu_r_max": _cfg_get(diff_cfg, "nu_r_max", 0.5)}
    return out


def selection_counts(latents: Optional[pd.DataFrame], diff_cfg: Any = None) -> dict:
    """Counts per selection stage (methods B11): Δ threshold → ν filter → assigned a category."""
    if latents is None or len(latents) == 0:
        return {}
    hi, lo = _cfg_get(diff_cfg, "fine_tune_only", 0.9), _cfg_get(diff_cfg, "base_only", 0.1)
    out: dict[str, Any] = {"latents": int(len(latents))}
    if "dead" in latents.columns:
        out["dead"] = int(latents["dead"].fillna(False).astype(bool).sum())
    if "delta_norm" in latents.columns:
        d = latents["delta_norm"]
        out["B_delta"] = int((d >= hi).sum())
        out["A_delta"] = int((d <= lo).sum())
    if "selected" in latents.columns and "set" in latents.columns:
        sel = latents[latents["selected"].fillna(False).astype(bool)]
        out["B_selected"] = int((sel["set"] == "S").sum())
        out["A_selected"] = int((sel["set"] == "T").sum())
        if "B_delta" in out:
            out["removed_by_latent_scaling"] = int(out["B_delta"] - out["B_selected"])
    if "category" in latents.columns:
        assigned = latents[latents["category"].notna()]
        if "selected" in latents.columns:
            assigned = assigned[assigned["selected"].fillna(False).astype(bool)]
        if "set" in latents.columns:
            out["B_assigned"] = int((assigned["set"] == "S").sum())
            out["A_assigned"] = int((assigned["set"] == "T").sum())
        else:
            out["assigned"] = int(len(assigned))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Caveats


def _caveats(report: dict, config: Any) -> list[str]:
    cv = []
    q = report["quality"]
    if not q["available"]:
        cv.append("Benchmarks-only report: no crosscoder artifacts were given, so no latent shifts, exposure, association or causal checks.")
    elif q["low_confidence"]:
        failed = [f"{g['metric']} ({g['model']})" for g in q["gates"] if g["passed"] is False]
        cv.append("Low confidence: quality gate(s) failed: " + (", ".join(failed) or "metrics missing") + ". Treat latent-level results as exploratory.")
    if q["available"]:
        arch = _cfg_get(config, "crosscoder.architecture") or q.get("architecture")
        cv.append("Latent counts depend on the dictionary seed (SAEs share ~30% of features across seeds); see the seed control.")
        if arch == "l1":
            cv.append("L1 crosscoder: Δnorm is prone to Complete Shrinkage / Latent Decoupling artifacts; Latent Scaling filters only part of them.")
        elif arch:
            cv.append(f"{arch} crosscoder: counts are not directly comparable with L1-trained dictionaries (e.g. the seed paper's).")
    small = [c["name"] for c in report["categories"] if (c.get("latent_shift") or {}).get("insufficient")]
    if small:
        cv.append(f"Small counts (n_S + n_T, or the clusters carrying the category when seeds are pooled, below the minimum) for: {', '.join(small)}; their ratios are unstable and shown for completeness.")
    cv += _composition_caveats(report["categories"])
    fallback = sorted(c for c, g in ((report.get("run") or {}).get("grounding") or {}).items()
                      if c != "neutral" and g.get("source") == "builtin")
    if fallback:
        cv.append(f"Grounded on the built-in real-language prompts, not on benchmark items (too few held-out items): {', '.join(fallback)}.")
    unmapped = [c["name"] for c in report["categories"] if c.get("latent_shift") and not c.get("score_gap") and c["name"] != "unassigned"]
    if unmapped and report["tasks"]:
        cv.append(f"No benchmark task is mapped to: {', '.join(unmapped)}; no score gap or sign agreement for them.")
    if any(c.get("perplexity_gap") for c in report["categories"]):
        cv.append("Perplexity probes (docs/method.md#perplexity-probes) compare the log-likelihood per byte of held-out "
                  "category text (B − A in nats/byte; × is B's byte perplexity over A's): they show that the models "
                  "read a category's text differently, not that a capability was gained or lost, and they never select "
                  "the linked family or the sign agreement.")
    if any(c.get("association") for c in report["categories"]):
        cv.append("Per-item associations are correlational; only the causal ablation (when run) tests that the latents matter.")
    pooled = any((c.get("latent_shift") or {}).get("method") == "pooled_seeds" for c in report["categories"])
    if pooled:
        cv.append("Score CIs are paired bootstrap intervals over documents. Latent shifts pool the specific latents of every "
                  "crosscoder seed; latents matched across seeds count as one cluster, the share-ratio CI (R − 1 scale) is a "
                  "cluster bootstrap and q a cluster label-permutation test with Benjamini-Hochberg.")
    else:
        cv.append("Score CIs are paired bootstrap intervals over documents; share-ratio CIs are Katz log intervals (R − 1 scale).")
    return cv


# ----------------------------------------------------------------------------------------------------------------------
# Build


def _composition_caveats(categories: Sequence[Mapping], dominant: float = 0.25) -> list[str]:
    """Share ratios are relative: a category holding a large share of one set lowers every other category's share in
    that set. For each category with at least ``dominant`` of S or T, say by how much that alone moves the other
    share ratios: the factor (1 − share_S) / (1 − share_T)."""
    out = []
    for c in categories:
        ls = c.get("latent_shift") or {}
        n_s, n_t, N_s, N_t = (_f(ls.get(k)) for k in ("n_S", "n_T", "N_S", "N_T"))
        if c.get("name") == "unassigned" or None in (n_s, n_t, N_s, N_t) or not N_s or not N_t:
            continue
        a, b = n_s / N_s, n_t / N_t
        if max(a, b) < dominant or max(a, b) >= 1:  # one category is the whole set: no other share to move
            continue
        factor = (1 - a) / (1 - b)
        if abs(math.log(factor)) < math.log(1.2):
            continue
        out.append(f"{c['name']} holds {100 * a:.0f} % of the fine-tune-specific set S and {100 * b:.0f} % of the "
                   f"comparison set T, so every other category's share ratio is moved by {100 * (factor - 1):+.0f} % by "
                   f"that alone; compare the other categories with each other as well as with no change.")
    return out


def seed_signs(per_seed: Optional[Sequence[Mapping]], category: str) -> Optional[dict]:
    """How many dictionary seeds put ``category``'s share ratio above / below no change: ``{n, positive, negative}``.

    ``per_seed``: rows ``{seed, category, share_ratio}`` (the seed control). A ratio of +inf (no base-specific latent of
    the category) counts as positive; a missing ratio (no latent of it on either side) counts in neither. None when
    fewer than two seeds were trained."""
    rows = [r for r in (per_seed or []) if r.get("category") == category]
    if len({r.get("seed") for r in (per_seed or [])}) < 2 or not rows:
        return None
    vals = [math.inf if r.get("share_ratio") == math.inf else _f(r.get("share_ratio")) for r in rows]
    vals = [v for v in vals if v is not None]
    return {"n": len(rows), "positive": sum(v > 0 for v in vals), "negative": sum(v < 0 for v in vals)}



def build_report(
    *,
    config: Any = None,
    quality: Optional[Mapping] = None,
    controls: Optional[Mapping] = None,
    linked: Any = None,
    scores: Any = None,
    latents: Optional[pd.DataFrame] = None,
    cards: Any = None,
    organism: Optional[Mapping] = None,
    meta: Optional[Mapping] = None,
    sections: bool = True,
) -> dict:
    """Assemble the report dict (schema ``lm_diff.report/v2``; docs/report_schema.md).

    - ``config``: the RunConfig (or None: defaults); ``quality``: {"models": {"A": {...}, "B": {...}}}; ``controls``:
      free-form dict of control results (``identity.passed`` feeds the gates).
    - ``linked``: the link stage's category rows (``lm_diff.link.table.link_categories``: name, latent_shift,
      score_gap, exposure, association, causal, agreement).
    - ``scores``: ``join.score_gaps`` records; the overall and task rows are shown (category rows come via ``linked``).
    - ``latents``: per-latent table (latent, delta_norm, set, nu_eps, nu_r, selected, category, ...);
      ``cards``: [{latent, set?, examples: [{text, act, tokens, acts}], ...examples-stage fields}] in display order
      (other fields are filled from ``latents``; :mod:`lm_diff.report.cards`).
    - ``organism``: the organism manifest ({"name", "planted": ...}) when the model pair is a model organism.
    - ``meta``: {"title", "models": {"A", "B"}, "paths", ...} kept under ``run``; ``meta["selection_counts"]`` overrides
      the counts derived from ``latents``.
    ``sections``: append ``lm_diff_report_sections`` hook contributions.
    """
    meta = dict(meta or {})
    score_rows = _records(scores)
    task_rows = [r for r in score_rows if r.get("level", "task") == "task"]
    overall = next((r for r in score_rows if r.get("level") == "overall" or r.get("name") == "overall"), None)
    cats = {r["name"]: dict(r) for r in _records(linked)}
    try:
        taxo = {c.name: c for c in get_taxonomy(config)}
    except UserError:  # the taxonomy is decoration here; a broken taxonomy plugin must not break the report
        taxo = {}
    planted = _planted_map(organism)
    per_seed = ((controls or {}).get("seeds") or {}).get("per_seed")
    categories = []
    for n in dict.fromkeys([*cats, *planted]):
        c = cats.get(n, {"name": n})
        row = {
            "name": n,
            "description": getattr(taxo.get(n), "description", None),
            "parent": getattr(taxo.get(n), "parent", None),
            "latent_shift": c.get("latent_shift"),
            "latent_change": c.get("latent_change"),
            "score_gap": c.get("score_gap"),
            "perplexity_gap": c.get("perplexity_gap"),
            "exposure": c.get("exposure"),
            "association": c.get("association"),
            "causal": c.get("causal"),
            "agreement": c.get("agreement"),
            "seed_signs": seed_signs(per_seed, n),
            "planted": (n in planted and _planted_sign(planted[n]) != 0) if organism else None,
            "planted_sign": _planted_sign(planted.get(n)) if organism else None,
        }
        if organism and n in planted and planted[n]:
            row["planted_info"] = _clean(planted[n])
        categories.append(row)

    def rank_key(c):  # the headline (what changed, docs/method.md#category-change) first, then the direction's q
        ls, lc = c.get("latent_shift") or {}, c.get("latent_change") or {}
        cq = _f(lc.get("q")) if (_f(lc.get("ratio")) or 0) > 0 else None
        q = _f(ls.get("q_value"))
        sr = _f(ls.get("share_ratio"))
        return (cq if cq is not None else 2.0, q if q is not None else 2.0, -abs(sr) if sr is not None else 0.0,
                c["name"])

    ranked = sorted((c for c in categories if c["name"] != "unassigned"), key=rank_key)
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "summary": None,
        "generated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "lm_diff_version": __version__,
        "title": meta.pop("title", None) or f"lm_diff report: {_cfg_get(config, 'name', 'run')}",
        "run": _clean({
            "name": _cfg_get(config, "name"),
            "design": _cfg_get(config, "design"),
            "layers": _cfg_get(config, "layers"),
            "models": meta.pop("models", None) or {"A": _cfg_get(config, "models.base"), "B": _cfg_get(config, "models.finetuned"),
                                                   "P": _cfg_get(config, "models.anchor")},
            "config": config.to_dict() if hasattr(config, "to_dict") else (dict(config) if isinstance(config, Mapping) else None),
            **{k: v for k, v in meta.items() if k != "selection_counts"},
        }),
        "quality": quality_section(quality, _cfg_get(config, "report.gates"), controls),
        "controls": _clean(dict(controls or {})),
        "overall": {k: overall.get(k) for k in ("delta", "ci_low", "ci_high", "p_value", "n", "score_a", "score_b", "unit", "flips_up", "flips_down", "mds")} if overall else None,
        "categories": categories,
        "ranking": [c["name"] for c in ranked if c.get("latent_shift")],
        "tasks": [{**{k: r.get(k) for k in ("name", "category", "metric", "n", "score_a", "score_b", "delta", "ci_low", "ci_high",
                                            "p_value", "flips_up", "flips_down", "unit", "mds")},
                   "probe": is_probe_task(r.get("name", ""))} for r in task_rows],
        "latent_summary": latent_summary(latents, _cfg_get(config, "diff")),
        "latent_cards": latent_cards(cards, latents),
        "selection_counts": _clean(meta.get("selection_counts") or selection_counts(latents, _cfg_get(config, "diff"))),
        "organism": _clean(dict(organism)) if organism else None,
        "caveats": [],
        "sections": [],
    }
    if organism and planted:
        top = report["ranking"][0] if report["ranking"] else None
        report["organism"]["recovered"] = top in planted if top else None
        report["organism"]["top_category"] = top
    report["caveats"] = _caveats(report, config)
    report["summary"] = build_summary(report, alpha=1 - float(_cfg_get(config, "stats.confidence", 0.95)))
    if sections:
        report["sections"] = collect_sections(report)
    return report


def collect_sections(report: dict) -> list[dict]:
    """``lm_diff_report_sections`` contributions: [{"title", "markdown"}] (malformed entries raise UserError)."""
    out = []
    for result in hook().lm_diff_report_sections(report=report):
        for s in result or []:
            if not isinstance(s, Mapping) or "title" not in s or "markdown" not in s:
                raise UserError(f"a lm_diff_report_sections plugin returned {s!r}; each section must be a dict with 'title' and 'markdown'")
            out.append({"title": str(s["title"]), "markdown": str(s["markdown"])})
    return out

