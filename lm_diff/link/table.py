"""The link stage's result: one row per category joining its latent shift, benchmark score gap, exposure, association
and causal check, with the linked-family q-values and the sign agreement (methods B7, B8).

``link_categories`` is the one place that computes linkage; the report only formats its rows.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import numpy as np
import pandas as pd

from lm_diff.bench.join import score_gaps
from lm_diff.bench.probes import is_probe_task
from lm_diff.link.association import association, causal_table, exposure, gap_significant, sign_agreement
from lm_diff.schema import (
    CHANGE_CI_HIGH,
    CHANGE_CI_LOW,
    CHANGE_INSUFFICIENT,
    CHANGE_MDS,
    CHANGE_P,
    CHANGE_Q,
    CHANGE_RATIO,
    CI_HIGH,
    CI_LOW,
    METHOD,
    N_SHARED,
    N_SPECIFIC,
    P_VALUE,
    Q_VALUE,
)
from lm_diff.stats import bh_qvalues

SHIFT_KEYS = ("share_ratio", "count_ratio", CI_LOW, CI_HIGH, Q_VALUE, P_VALUE, "n_S", "n_T", "N_S", "N_T",
              "insufficient", "mass_share_S", "mass_share_T", "ci_level", "mds_up", "mds_down")
# report.json's latent_change keys <- the shift table's change columns (docs/method.md#category-change)
CHANGE_KEYS = {"ratio": CHANGE_RATIO, "ci_low": CHANGE_CI_LOW, "ci_high": CHANGE_CI_HIGH, "p": CHANGE_P, "q": CHANGE_Q,
               "mds": CHANGE_MDS, "n_specific": N_SPECIFIC, "n_shared": N_SHARED, "insufficient": CHANGE_INSUFFICIENT}
GAP_KEYS = ("delta", "ci_low", "ci_high", "p_value", "n", "score_a", "score_b", "tasks", "unit", "flips_up", "flips_down",
            "mds")


def clean(v: Any) -> Any:
    """A JSON-able copy of ``v`` (numpy scalars and arrays as Python values, NaN/inf/NA as None)."""
    if isinstance(v, Mapping):
        return {str(k): clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [clean(x) for x in v]
    if isinstance(v, np.ndarray):
        return [clean(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if v is pd.NA or v is pd.NaT:
        return None
    return v


def records(table: Any) -> list[dict]:
    """DataFrame / list of dicts / None -> list of plain dicts (NaN -> None)."""
    if table is None:
        return []
    if isinstance(table, pd.DataFrame):
        recs = table.to_dict(orient="records")
    elif isinstance(table, Mapping):
        recs = [dict(v, name=k) if isinstance(v, Mapping) else {"name": k, "value": v} for k, v in table.items()]
    else:
        recs = [dict(r) for r in table]
    return [{k: clean(v) for k, v in r.items()} for r in recs]


def as_float(x: Any) -> Optional[float]:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def make_category_table(
    shift: Any = None,
    exposure: Optional[pd.DataFrame] = None,
    association: Optional[pd.DataFrame] = None,
    causal: Optional[Mapping[str, Mapping]] = None,
) -> list[dict]:
    """Merge the per-category outputs of the shift and link computations: [{name, latent_shift, latent_change,
    exposure, association, causal}] (latent_change: the shift table's ``change_*`` columns under ``CHANGE_KEYS``).

    ``shift``: the shift table (lm_diff.schema "shift": share_ratio and count_ratio as R − 1, ci_low/ci_high of the
    share ratio on the same scale, p_value, q_value, n_S, n_T, N_S, N_T, insufficient, method, clusters when pooled);
    ``exposure``: the ``link.exposure`` table; ``association``: the ``link.association`` table; ``causal``:
    {category: causal_fraction dict}.
    """
    rows: dict[str, dict] = {}

    def row(c: str) -> dict:
        return rows.setdefault(str(c), {"name": str(c), "latent_shift": None, "latent_change": None, "exposure": None,
                                        "association": None, "causal": None})

    for r in records(shift):
        ls = {k: r.get(k) for k in SHIFT_KEYS if k in r}
        for k in ("share_ratio", "count_ratio", CI_LOW, CI_HIGH, Q_VALUE, "n_S", "n_T", "insufficient"):
            ls.setdefault(k, None)
        ls[METHOD] = r[METHOD]
        if r.get("clusters") is not None:  # pooled over seeds: clusters of matched latents carrying the category
            ls["clusters"] = r["clusters"]
        row(r["category"])["latent_shift"] = ls
        if any(r.get(col) is not None for col in CHANGE_KEYS.values()):  # a shift table with the change columns
            row(r["category"])["latent_change"] = {k: r.get(col) for k, col in CHANGE_KEYS.items()}
    if exposure is not None and len(exposure):
        for c, g in exposure.groupby("category"):
            ex: dict[str, Any] = {"by_task": {}}
            for _, e in g.iterrows():
                if e["task"] is None or (isinstance(e["task"], float) and math.isnan(e["task"])):
                    ex[str(e["set"])] = as_float(e["exposure"])
                    ex["scope"] = e.get("scope")
                    ex[f"n_docs_{e['set']}"] = int(e["n_docs"])
                else:
                    ex["by_task"].setdefault(str(e["task"]), {})[str(e["set"])] = as_float(e["exposure"])
            ex.setdefault("S", None)
            ex.setdefault("T", None)
            row(c)["exposure"] = ex
    for r in records(association):
        row(r["category"])["association"] = {k: r.get(k) for k in ("r", P_VALUE, Q_VALUE, "n_docs", "n_flips", "scope")}
    for c, v in (causal or {}).items():
        row(c)["causal"] = clean(dict(v)) if v is not None else None
    return list(rows.values())


def linked_qvalues(categories: list[dict]) -> None:
    """Add ``latent_shift.q_linked`` to the categories whose benchmark gap is significant: Benjamini-Hochberg over
    that family only. The report's primary question is why the benchmarks moved, so its primary hypotheses are the
    latent shifts of the categories whose score moved; the exploratory ``q_value`` stays BH over every category.
    Selecting the family by the score gap is independent filtering (Bourgon et al. 2010): the shift's p-value is a
    label-permutation test over latents, uniform under its null whatever the benchmark scores are, so BH over the
    family still controls the false discovery rate."""
    family = [c for c in categories if c.get("latent_shift") and c.get("score_gap") and gap_significant(c["score_gap"])
              and not c["latent_shift"].get("insufficient") and as_float(c["latent_shift"].get(P_VALUE)) is not None]
    if not family:
        return
    q = bh_qvalues(np.array([as_float(c["latent_shift"][P_VALUE]) for c in family]))
    for c, qq in zip(family, q):
        c["latent_shift"]["q_linked"] = float(qq)


def link_categories(category_table: Any, score_table: Any, alpha: float = 0.05) -> list[dict]:
    """Rows {name, latent_shift, latent_change, score_gap, perplexity_gap, exposure, association, causal, agreement}, one per
    category of ``category_table`` (``make_category_table``) or of the category-level score gaps, with ``q_linked``
    and the sign agreement (computed on ``q_linked`` where the category is in the linked family). ``score_gap`` is the
    accuracy-like pool (``level`` category), ``perplexity_gap`` the category's perplexity probes (``level`` probe,
    docs/method.md#perplexity-probes); only ``score_gap`` selects the linked family and the sign agreement."""
    all_rows = records(score_table)
    score_rows = [r for r in all_rows if r.get("level", "category") in ("category", "overall")]
    probes = {r["name"]: r for r in all_rows if r.get("level") == "probe"}
    overall = next((r for r in score_rows if r.get("level") == "overall" or r.get("name") == "overall"), None)
    gaps = {r["name"]: r for r in score_rows if r is not overall}
    cats = {r["name"]: dict(r) for r in records(category_table)}
    out = []
    for n in dict.fromkeys([*cats, *gaps, *probes]):
        c, g, pg = cats.get(n, {"name": n}), gaps.get(n), probes.get(n)
        ls = c.get("latent_shift")
        lc = c.get("latent_change")
        out.append({"name": n, "latent_shift": dict(ls) if ls else ls, "latent_change": dict(lc) if lc else None,
                    "score_gap": {k: g.get(k) for k in GAP_KEYS} if g else None,
                    "perplexity_gap": {k: pg.get(k) for k in GAP_KEYS} if pg else None,
                    "exposure": c.get("exposure"), "association": c.get("association"), "causal": c.get("causal"),
                    "agreement": None})
    linked_qvalues(out)
    for row in out:
        ls, gap = row["latent_shift"], row["score_gap"]
        if ls and gap:
            linked = ls if ls.get("q_linked") is None else {**ls, Q_VALUE: ls["q_linked"]}
            row["agreement"] = sign_agreement(linked, gap, alpha=alpha)
    return out


def link(joined: pd.DataFrame, task_categories: Mapping[str, str], stats_cfg: Any, shift: Optional[pd.DataFrame] = None,
         categories: Optional[pd.DataFrame] = None, doc_acts: Optional[pd.DataFrame] = None,
         causal: Optional[Mapping] = None) -> dict:
    """Everything the link stage computes from the joined benchmark runs and the latent-side tables:
    ``{"categories": link_categories rows, "scores": score-gap records (overall, category and task levels)}``."""
    gaps = score_gaps(joined, task_categories, stats_cfg)
    category_table = None
    if shift is not None or categories is not None or causal is not None:
        ex = asc = None
        if doc_acts is not None and categories is not None:
            # perplexity probes have no prompt to capture: their documents would count as never activating
            scored = joined[~joined.task.map(is_probe_task).astype(bool)] if len(joined) else joined
            scored.attrs = dict(joined.attrs)
            ex = exposure(doc_acts, categories, scored, task_categories)
            asc = association(doc_acts, categories, scored, task_categories, stats_cfg)
        category_table = make_category_table(shift, ex, asc, causal_table(causal))
    alpha = 1 - float(getattr(stats_cfg, "confidence", 0.95))
    return {"categories": link_categories(category_table, gaps, alpha), "scores": records(gaps)}
