"""The combined report: a versioned JSON-able dict (schema ``lm_diff.report/v1``, see docs/report_schema.md) and
its writers (json, md, html through the ``lm_diff_report_writers`` hook; a rich terminal summary).

``build_report(...)`` assembles the dict from the stage outputs; ``write_report(report, out_dir, formats)`` runs the
writers (all atomic); ``print_summary(report)`` prints the terminal summary. Quality gates come first everywhere.
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from lm_diff.errors import UserError

SCHEMA = "lm_diff.report/v1"

# ----------------------------------------------------------------------------------------------------------------------
# Small helpers


def _records(table: Any) -> list[dict]:
    """DataFrame / list of dicts / None -> list of plain dicts (NaN -> None)."""
    if table is None:
        return []
    if isinstance(table, pd.DataFrame):
        recs = table.to_dict(orient="records")
    elif isinstance(table, Mapping):
        recs = [dict(v, name=k) if isinstance(v, Mapping) else {"name": k, "value": v} for k, v in table.items()]
    else:
        recs = [dict(r) for r in table]
    return [{k: _clean(v) for k, v in r.items()} for r in recs]


def _clean(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, np.ndarray):
        return [_clean(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if v is pd.NA or v is pd.NaT:
        return None
    return v


def _f(x: Any) -> Optional[float]:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


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
    from lm_diff.config import GatesConfig

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


# ----------------------------------------------------------------------------------------------------------------------
# Category table


_SHIFT_KEYS = ("share_ratio", "count_ratio", "ci_low", "ci_high", "q_value", "p_value", "n_S", "n_T", "N_S", "N_T",
               "insufficient", "mass_share_S", "mass_share_T")


_SHIFT_ALIASES = {
    # lm_diff.categorize.shift.category_shift column names (R − 1 scale) and generic ones
    "ci_low": ("share_ratio_lo", "share_ratio_ci_low"),
    "ci_high": ("share_ratio_hi", "share_ratio_ci_high"),
    "p_value": ("fisher_p", "p", "perm_p"),
    "q_value": ("fisher_q", "q"),
}


def make_category_table(
    shift: Any = None,
    exposure: Optional[pd.DataFrame] = None,
    association: Optional[pd.DataFrame] = None,
    causal: Optional[Mapping[str, Mapping]] = None,
) -> list[dict]:
    """Merge the per-category outputs of shift/link into the rows ``build_report(category_table=...)`` takes.

    ``shift``: rows with ``category`` and the latent-shift columns (share_ratio and count_ratio as R − 1, ci_low/ci_high
    of the share ratio on the same R − 1 scale, p_value/q_value, n_S, n_T, N_S, N_T, insufficient); ``exposure``: the
    ``link.exposure`` table; ``association``: the ``link.association`` table; ``causal``: {category: causal_fraction
    dict}. Returns [{name, latent_shift, exposure, association, causal}].
    """
    rows: dict[str, dict] = {}

    def row(c: str) -> dict:
        return rows.setdefault(str(c), {"name": str(c), "latent_shift": None, "exposure": None, "association": None, "causal": None})

    for r in _records(shift):
        name = r.get("category", r.get("name"))
        if name is None:
            continue
        ls = {k: r.get(k) for k in _SHIFT_KEYS if k in r}
        for key, aliases in _SHIFT_ALIASES.items():
            for a in aliases:
                if ls.get(key) is None and r.get(a) is not None:
                    ls[key] = r[a]
        for k in ("share_ratio", "count_ratio", "ci_low", "ci_high", "q_value", "n_S", "n_T", "insufficient"):
            ls.setdefault(k, None)
        if r.get("clusters_c") is not None:  # shift.pooled_category_shift: seeds pooled, clusters as the unit
            ls["method"] = "pooled_seeds"
            ls["clusters"] = r["clusters_c"]
        else:
            ls["method"] = "single_seed"
        row(name)["latent_shift"] = ls
    if exposure is not None and len(exposure):
        for c, g in exposure.groupby("category"):
            ex: dict[str, Any] = {"by_task": {}}
            for _, e in g.iterrows():
                if e["task"] is None or (isinstance(e["task"], float) and math.isnan(e["task"])):
                    ex[str(e["set"])] = _f(e["exposure"])
                    ex["scope"] = e.get("scope")
                    ex[f"n_docs_{e['set']}"] = int(e["n_docs"])
                else:
                    ex["by_task"].setdefault(str(e["task"]), {})[str(e["set"])] = _f(e["exposure"])
            ex.setdefault("S", None)
            ex.setdefault("T", None)
            row(c)["exposure"] = ex
    for r in _records(association):
        row(r["category"])["association"] = {k: r.get(k) for k in ("r", "p_value", "q_value", "n_docs", "n_flips", "scope")}
    for c, v in (causal or {}).items():
        row(c)["causal"] = _clean(dict(v)) if v is not None else None
    return list(rows.values())


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


def _cards(cards: Any, latents: Optional[pd.DataFrame], n_cards: int, n_examples: int) -> list[dict]:
    recs = _records(cards)
    info = {}
    if latents is not None and len(latents) and "latent" in latents.columns:
        keep = [c for c in ("delta_norm", "nu_eps", "nu_r", "category", "set", "freq", "max_act", "tag") if c in latents.columns]
        for _, r in latents.iterrows():
            info[(int(r["latent"]), _clean(r.get("set")))] = {k: _clean(r[k]) for k in keep}
    out = []
    for c in recs[:n_cards]:
        key = (int(c["latent"]), c.get("set"))
        base = dict(info.get(key) or info.get((key[0], None)) or {})
        if not base:
            base = next((v for (j, _s), v in info.items() if j == key[0]), {})
        base.update({k: v for k, v in c.items() if v is not None})
        ex = base.get("examples") or []
        base["examples"] = [e if isinstance(e, Mapping) else {"text": str(e)} for e in ex][:n_examples]
        for k in ("delta_norm", "nu_eps", "nu_r", "category", "set"):
            base.setdefault(k, None)
        out.append(base)
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
    unmapped = [c["name"] for c in report["categories"] if c.get("latent_shift") and not c.get("score_gap") and c["name"] != "unassigned"]
    if unmapped and report["tasks"]:
        cv.append(f"No benchmark task is mapped to: {', '.join(unmapped)}; no score gap or sign agreement for them.")
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
    category_table: Any = None,
    score_table: Any = None,
    task_table: Any = None,
    latents: Optional[pd.DataFrame] = None,
    cards: Any = None,
    organism: Optional[Mapping] = None,
    meta: Optional[Mapping] = None,
    sections: bool = True,
) -> dict:
    """Assemble the report dict (schema ``lm_diff.report/v1``; docs/report_schema.md).

    - ``config``: the RunConfig (or None: defaults); ``quality``: {"models": {"A": {...}, "B": {...}}}; ``controls``:
      free-form dict of control results (``identity.passed`` feeds the gates).
    - ``category_table``: rows from ``make_category_table`` ({name, latent_shift, exposure, association, causal}).
    - ``score_table``: ``join.score_gaps`` rows of level category/overall (task rows are ignored here);
      ``task_table``: rows of level task. A single ``score_gaps`` DataFrame may be passed to both.
    - ``latents``: per-latent table (latent, delta_norm, set, nu_eps, nu_r, selected, category, ...);
      ``cards``: [{latent, set?, examples: [{text, act}]}] (other fields are filled from ``latents``).
    - ``organism``: the organism manifest ({"name", "planted": ...}) when the model pair is a model organism.
    - ``meta``: {"title", "models": {"A", "B"}, "paths", ...} kept under ``run``; ``meta["selection_counts"]`` overrides
      the counts derived from ``latents``.
    ``sections``: append ``lm_diff_report_sections`` hook contributions.
    """
    from lm_diff import __version__
    from lm_diff.link.association import sign_agreement

    meta = dict(meta or {})
    stats_cfg = _cfg_get(config, "stats")
    alpha = 1 - float(_cfg_get(stats_cfg, "confidence", 0.95))
    score_rows = [r for r in _records(score_table) if r.get("level", "category") in ("category", "overall")]
    task_rows = [r for r in _records(task_table) if r.get("level", "task") == "task"]
    overall = next((r for r in score_rows if r.get("level") == "overall" or r.get("name") == "overall"), None)
    gaps = {r["name"]: r for r in score_rows if r is not overall}
    cats = {r["name"]: dict(r) for r in _records(category_table)}
    try:
        from lm_diff.categorize.taxonomy import get_taxonomy

        taxo = {c.name: c for c in get_taxonomy(config)}
    except Exception:  # the taxonomy is decoration here; a broken plugin must not break the report
        taxo = {}
    planted = _planted_map(organism)
    per_seed = ((controls or {}).get("seeds") or {}).get("per_seed")
    names = list(dict.fromkeys([*cats, *gaps, *planted]))
    categories = []
    for n in names:
        c = cats.get(n, {"name": n})
        g = gaps.get(n)
        gap = None
        if g:
            gap = {k: g.get(k) for k in ("delta", "ci_low", "ci_high", "p_value", "n", "score_a", "score_b", "tasks", "unit", "flips_up", "flips_down")}
        ls = c.get("latent_shift")
        row = {
            "name": n,
            "description": getattr(taxo.get(n), "description", None),
            "parent": getattr(taxo.get(n), "parent", None),
            "latent_shift": dict(ls) if ls else ls,  # a copy: linked_qvalues adds to it
            "score_gap": gap,
            "exposure": c.get("exposure"),
            "association": c.get("association"),
            "causal": c.get("causal"),
            "agreement": None,  # set below, once the linked family is known
            "seed_signs": seed_signs(per_seed, n),
            "planted": (n in planted and _planted_sign(planted[n]) != 0) if organism else None,
            "planted_sign": _planted_sign(planted.get(n)) if organism else None,
        }
        if organism and n in planted and planted[n]:
            row["planted_info"] = _clean(planted[n])
        categories.append(row)

    linked_qvalues(categories)
    for row in categories:
        ls, gap = row["latent_shift"], row["score_gap"]
        if ls and gap:
            linked = ls if ls.get("q_linked") is None else {**ls, "q_value": ls["q_linked"]}
            row["agreement"] = sign_agreement(linked, gap, alpha=alpha)

    def rank_key(c):
        ls = c.get("latent_shift") or {}
        q = _f(ls.get("q_value"))
        sr = _f(ls.get("share_ratio"))
        return (q if q is not None else 2.0, -abs(sr) if sr is not None else 0.0, c["name"])

    ranked = sorted((c for c in categories if c["name"] != "unassigned"), key=rank_key)
    report: dict[str, Any] = {
        "schema": SCHEMA,
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
        "overall": {k: overall.get(k) for k in ("delta", "ci_low", "ci_high", "p_value", "n", "score_a", "score_b", "unit", "flips_up", "flips_down")} if overall else None,
        "categories": categories,
        "ranking": [c["name"] for c in ranked if c.get("latent_shift")],
        "tasks": [{k: r.get(k) for k in ("name", "category", "metric", "n", "score_a", "score_b", "delta", "ci_low", "ci_high",
                                         "p_value", "flips_up", "flips_down", "unit")} for r in task_rows],
        "latent_summary": latent_summary(latents, _cfg_get(config, "diff")),
        "latent_cards": _cards(cards, latents, int(_cfg_get(config, "report.latent_cards", 12)), int(_cfg_get(config, "report.card_examples", 5))),
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
    if sections:
        report["sections"] = collect_sections(report)
    return report


def collect_sections(report: dict) -> list[dict]:
    """``lm_diff_report_sections`` contributions: [{"title", "markdown"}] (malformed entries raise UserError)."""
    from lm_diff.plugins.manager import hook

    out = []
    for result in hook().lm_diff_report_sections(report=report):
        for s in result or []:
            if not isinstance(s, Mapping) or "title" not in s or "markdown" not in s:
                raise UserError(f"a lm_diff_report_sections plugin returned {s!r}; each section must be a dict with 'title' and 'markdown'")
            out.append({"title": str(s["title"]), "markdown": str(s["markdown"])})
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Writers


def report_writers() -> dict[str, Any]:
    """Format name -> ``write(report, out_dir) -> Path`` from every ``lm_diff_report_writers`` hook (first wins)."""
    from lm_diff.plugins.manager import hook

    merged: dict[str, Any] = {}
    for result in hook().lm_diff_report_writers():
        for k, v in (result or {}).items():
            merged.setdefault(str(k), v)
    return merged


def write_report(report: dict, out_dir: str | Path, formats: Optional[Iterable[str]] = None) -> dict[str, Path]:
    """Run the writers for ``formats`` (default json, md, html) into ``out_dir``; returns {format: path}."""
    writers = report_writers()
    formats = list(formats or ["json", "md", "html"])
    unknown = [f for f in formats if f not in writers]
    if unknown:
        raise UserError(f"report format(s) {', '.join(unknown)} have no writer; available: {', '.join(sorted(writers))} (set report.formats)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {f: Path(writers[f](report, out)) for f in formats}


def write_json_report(report: dict, out_dir: Path) -> Path:
    from lm_diff.io import write_json

    return write_json(Path(out_dir) / "report.json", report)


def write_md_report(report: dict, out_dir: Path) -> Path:
    from lm_diff.io import write_text

    return write_text(Path(out_dir) / "report.md", to_markdown(report))


# ----------------------------------------------------------------------------------------------------------------------
# Formatting (shared by md, html and terminal)


def fmt_num(x: Any, nd: int = 1, signed: bool = False) -> str:
    v = _f(x)
    if v is None:
        return "–"
    return f"{v:+.{nd}f}" if signed else f"{v:.{nd}f}"


def fmt_ci(lo: Any, hi: Any, nd: int = 1) -> str:
    if _f(lo) is None and _f(hi) is None:
        return ""
    return f"[{fmt_num(lo, nd, True)}, {fmt_num(hi, nd, True)}]"


def fmt_pct(x: Any) -> str:
    v = _f(x)
    return "–" if v is None else f"{100 * v:+.1f}%"


def fmt_p(x: Any) -> str:
    v = _f(x)
    if v is None:
        return "–"
    return f"{v:.2g}" if v >= 0.001 else "<0.001"


def agreement_label(a: Any) -> str:
    return {True: "agree", False: "disagree"}.get(a, "n.s.")


def _md_cell(x: Any) -> str:
    s = "" if x is None else str(x)
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ").replace("<", "&lt;").replace(">", "&gt;")


def _md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return lines


def gates_lines(report: dict) -> list[str]:
    q = report["quality"]
    if not q["available"]:
        return ["_No crosscoder quality metrics (benchmarks-only report)._"]
    verdict = "**PASS**" if q["passed"] else "**LOW CONFIDENCE**"
    lines = [f"Verdict: {verdict}", ""]
    rows = []
    for g in q["gates"]:
        mark = {True: "pass", False: "FAIL", None: "missing"}[g["passed"]]
        v = g["value"]
        rows.append([g["model"], g["metric"], fmt_num(v, 3) if isinstance(v, (int, float)) and not isinstance(v, bool) else v, f"{g['op']} {g['threshold']}", mark])
    lines += _md_table(["model", "metric", "value", "gate", "result"], rows)
    lines.append("")
    mrows = []
    for m, v in q["models"].items():
        mrows.append([m, fmt_num(v.get("ev"), 3), fmt_num(v.get("l0"), 1), fmt_num(v.get("dead_fraction"), 3), fmt_num(v.get("delta_ce"), 3), fmt_num(v.get("kl"), 3)])
    lines += _md_table(["model", "EV", "L0", "dead", "spliced ΔCE", "KL"], mrows)
    return lines


def linked_qvalues(categories: list[dict]) -> None:
    """Add ``latent_shift.q_linked`` to the categories whose benchmark gap is significant: Benjamini-Hochberg over
    that family only. The report's primary question is why the benchmarks moved, so its primary hypotheses are the
    latent shifts of the categories whose score moved; the exploratory ``q_value`` stays BH over every category.
    Selecting the family by the score gap is independent filtering (Bourgon et al. 2010): the shift's p-value is a
    label-permutation test over latents, uniform under its null whatever the benchmark scores are, so BH over the
    family still controls the false discovery rate."""
    from lm_diff.link.association import gap_significant
    from lm_diff.stats import bh_qvalues

    family = [c for c in categories if c.get("latent_shift") and c.get("score_gap") and gap_significant(c["score_gap"])
              and not c["latent_shift"].get("insufficient") and _f(c["latent_shift"].get("p_value")) is not None]
    if not family:
        return
    q = bh_qvalues(np.array([_f(c["latent_shift"]["p_value"]) for c in family]))
    for c, qq in zip(family, q):
        c["latent_shift"]["q_linked"] = float(qq)


def _q_cell(ls: Mapping) -> str:
    """``q`` (BH over all categories), with the linked-family q after a slash when there is one."""
    q = fmt_p(ls.get("q_value"))
    return q if ls.get("q_linked") is None else f"{q} / {fmt_p(ls['q_linked'])}"


def category_rows(report: dict) -> list[list[str]]:
    rows = []
    for c in report["categories"]:
        ls, g, ex, a, k = c.get("latent_shift") or {}, c.get("score_gap") or {}, c.get("exposure") or {}, c.get("association") or {}, c.get("causal") or {}
        rows.append([
            c["name"] + ({1: " (planted +)", -1: " (planted −)"}.get(c.get("planted_sign") or 0, "")),
            f"{fmt_num(g.get('delta'), 1, True)} {fmt_ci(g.get('ci_low'), g.get('ci_high'))}".strip() if g else "–",
            f"{fmt_pct(ls.get('share_ratio'))} [{fmt_pct(ls.get('ci_low'))}, {fmt_pct(ls.get('ci_high'))}]" if ls else "–",
            fmt_pct(ls.get("count_ratio")) if ls else "–",
            _q_cell(ls) if ls else "–",
            f"{ls.get('n_S', '–')}/{ls.get('n_T', '–')}" + (" insufficient" if ls.get("insufficient") else "") if ls else "–",
            f"{fmt_num(ex.get('S'), 2)} / {fmt_num(ex.get('T'), 2)}" if ex else "–",
            f"{fmt_num(a.get('r'), 2, True)} (p {fmt_p(a.get('p_value'))})" if a else "–",
            fmt_num(k.get("fraction"), 2) + (f" (rand {fmt_num(k.get('random_fraction'), 2)})" if k.get("random_fraction") is not None else "") if k else "–",
            _seed_cell(c.get("seed_signs")),
            agreement_label(c.get("agreement")),
        ])
    return rows


def _seed_cell(s: Optional[Mapping]) -> str:
    """``3/3 +`` when every seed agrees, else ``2+ 1−`` (seeds whose share ratio is above / below no change), then
    ``1 n/a`` for seeds with no latent of the category in either set."""
    if not s:
        return "–"
    p, m, n = s["positive"], s["negative"], s["n"]
    if p == n:
        return f"{n}/{n} +"
    if m == n:
        return f"{n}/{n} −"
    rest = n - p - m  # seeds with no latent of the category on either side, or exactly no change
    return f"{p}+ {m}−" + (f" {rest} n/a" if rest else "")


CATEGORY_HEADERS = ["category", "Δscore (pts) [CI]", "share ratio [CI]", "count ratio", "q all / linked", "n_S/n_T", "exposure S/T",
                    "assoc. r (p)", "causal frac.", "seeds", "sign"]


def to_markdown(report: dict) -> str:
    """The Markdown report (quality gates first)."""
    L = [f"# {_md_cell(report['title'])}", ""]
    models = (report.get("run") or {}).get("models") or {}
    if models:
        L.append("Models: " + ", ".join(f"**{k}** = `{_md_cell(v)}`" for k, v in models.items() if v))
        L.append("")
    L += ["## Quality gates", ""] + gates_lines(report) + [""]
    o = report.get("overall")
    if o:
        L += ["## Overall", "", f"Δscore (B − A) = **{fmt_num(o['delta'], 1, True)} points** {fmt_ci(o['ci_low'], o['ci_high'])} "
              f"over {o['n']} documents (A {fmt_num(o['score_a'])}, B {fmt_num(o['score_b'])}; p {fmt_p(o.get('p_value'))}).", ""]
    L += ["## Categories", ""] + _md_table(CATEGORY_HEADERS, category_rows(report)) + [""]
    if report["tasks"]:
        L += ["## Tasks", ""]
        L += _md_table(["task", "category", "metric", "n", "A", "B", "Δ (pts)", "CI", "p"],
                       [[t["name"], t.get("category"), t.get("metric"), t.get("n"), fmt_num(t.get("score_a")), fmt_num(t.get("score_b")),
                         fmt_num(t.get("delta"), 1, True), fmt_ci(t.get("ci_low"), t.get("ci_high")), fmt_p(t.get("p_value"))] for t in report["tasks"]])
        L.append("")
    if report.get("selection_counts"):
        L += ["## Selection counts", ""] + _md_table(["stage", "count"], list(report["selection_counts"].items())) + [""]
    if report.get("organism"):
        org = report["organism"]
        L += ["## Model organism", "", f"Planted: {_md_cell(', '.join(c['name'] for c in report['categories'] if c.get('planted')))}; "
              f"top-ranked category: {_md_cell(org.get('top_category'))}; recovered: {org.get('recovered')}", ""]
    if report["latent_cards"]:
        L += ["## Latent cards", ""]
        for c in report["latent_cards"]:
            L.append(f"### Latent {c['latent']} ({_md_cell(c.get('set') or '')}, {_md_cell(c.get('category') or 'unassigned')})")
            L.append(f"Δnorm {fmt_num(c.get('delta_norm'), 3)}, ν^ε {fmt_num(c.get('nu_eps'), 3)}, ν^r {fmt_num(c.get('nu_r'), 3)}")
            L.append("")
            for e in c["examples"]:
                L.append(f"- `{fmt_num(e.get('act'), 2)}` {_md_cell(e.get('text'))}")
            L.append("")
    if report.get("controls"):
        import json

        L += ["## Controls", "", "```json", json.dumps(report["controls"], indent=2, ensure_ascii=False, default=str), "```", ""]
    L += ["## Caveats", ""] + [f"- {_md_cell(c)}" for c in report["caveats"]] + [""]
    for s in report.get("sections") or []:
        L += [f"## {_md_cell(s['title'])}", "", s["markdown"], ""]
    L.append(f"<sub>{report['schema']} · lm_diff {report['lm_diff_version']} · {report['generated_at']}</sub>")
    return "\n".join(L) + "\n"


def print_summary(report: dict, console: Any = None) -> None:
    """Rich terminal summary: gates, overall gap, category table, where the files are."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    con = console or Console(highlight=False)
    q = report["quality"]
    if q["available"]:
        style = "green" if q["passed"] else "bold red"
        con.print(f"[{style}]quality gates: {'PASS' if q['passed'] else 'LOW CONFIDENCE'}[/{style}]")
        for g in q["gates"]:
            if g["passed"] is False:
                con.print(f"  [red]FAIL[/red] {escape(str(g['model']))} {g['metric']} = {g['value']} (gate {g['op']} {g['threshold']})")
    else:
        con.print("[yellow]benchmarks-only report[/yellow] (no crosscoder artifacts)")
    o = report.get("overall")
    if o:
        con.print(f"overall Δscore (B − A): [bold]{fmt_num(o['delta'], 1, True)}[/bold] points {fmt_ci(o['ci_low'], o['ci_high'])} over {o['n']} docs")
    t = Table(title="categories", show_lines=False)
    for h in ["category", "Δscore [CI]", "share ratio [CI]", "q all / linked", "n_S/n_T", "seeds", "sign"]:
        t.add_column(h)
    for r in category_rows(report):
        t.add_row(*(escape(str(x)) for x in (r[0], r[1], r[2], r[4], r[5], r[9], r[10])))
    con.print(t)
