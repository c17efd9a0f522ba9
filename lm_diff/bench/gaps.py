"""Paired score gaps between two joined lm-eval runs: per task, per category and overall.

``score_gaps(joined, task_categories, stats_cfg)`` takes ``lm_diff.bench.join.join_runs`` output. Each task is compared
on its metric kind's per-item quantity (``lm_diff.bench.metric_kinds``; the ``quantity`` and ``unit`` columns say
which): accuracy-like metrics in points, perplexities as log-likelihood per word/byte, bits per byte as such. The CI is
a paired bootstrap over documents (``lm_diff.stats.paired_bootstrap_diff`` for one task; stratified by task for pooled
rows) and the p-value a paired sign-flip permutation test. Corpus-level metrics (F1, MCC, BLEU, chrF, TER) get
lm-eval's corpus score per model and their difference, with no CI or p-value (``test`` = ``none``).

Every paired row also says what its size can resolve: ``mds``, the minimum detectable gap at the run's α and power
(docs/method.md#task-resolution): McNemar's for right/wrong items, the paired-difference SD otherwise
(:mod:`lm_diff.power`). The perplexity probes (:mod:`lm_diff.bench.probes`) are kept apart from the accuracy rows:
their category pool is a ``probe`` row, and they enter neither the ``category`` nor the ``overall`` pool.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import pandas as pd

from lm_diff.bench.metric_kinds import MEAN, MetricKind, lm_eval_score
from lm_diff.bench.probes import is_probe_task
from lm_diff.config import StatsConfig
from lm_diff.power import min_detectable_accuracy_gap, min_detectable_mean_gap
from lm_diff.stats import paired_bootstrap_diff

GAP_COLUMNS = [
    "level", "name", "category", "metric", "tasks", "n", "score_a", "score_b", "delta", "ci_low", "ci_high", "p_value",
    "flips_up", "flips_down", "unit", "quantity", "lm_eval_a", "lm_eval_b", "test", "mds",
]
"""Columns of ``score_gaps``. ``score_a``/``score_b``/``delta`` are on the compared quantity in ``unit`` (Δ oriented so
that positive = B better); ``lm_eval_a``/``lm_eval_b`` are lm-eval's own task scores (task rows only); ``mds`` is the
smallest |Δ| the row's items could detect at the run's α and power, in ``unit`` (NaN where no paired test or no gap
could). ``level`` is ``task``, ``category`` (accuracy-like tasks pooled), ``probe`` (a category's perplexity probes
pooled) or ``overall``."""

_GENERIC_UNITS = ("points", "raw")
_PAIRED_TEST = "paired bootstrap CI, sign-flip p"
_NO_TEST = "none (corpus-level metric: lm-eval's score per model, no per-item test)"


def _stratified_bootstrap(d: np.ndarray, strata: np.ndarray, n_boot: int, confidence: float,
                          seed: int) -> tuple[float, float]:
    """Percentile CI of mean(d) resampling documents within each stratum (task sizes fixed, like lm-eval's
    weight_by_size pooling). ``lm_diff.stats.paired_bootstrap_diff`` has no strata; this is the pooled-row variant."""
    n = d.size
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(strata == s) for s in pd.unique(strata)]
    totals = np.zeros(n_boot)
    chunk = max(1, int(2_000_000 // max(1, max(len(g) for g in groups))))
    for g in groups:
        dg = d[g]
        for start in range(0, n_boot, chunk):
            stop = min(n_boot, start + chunk)
            totals[start:stop] += dg[rng.integers(0, len(g), size=(stop - start, len(g)))].sum(axis=1)
    alpha = 1 - confidence
    lo, hi = np.quantile(totals / n, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def sign_flip_pvalue(diffs: np.ndarray, n_perm: int = 2000, seed: int = 0) -> float:
    """Two-sided paired permutation p-value for mean(diffs) = 0 (random sign flips; add-one smoothing)."""
    d = np.asarray(diffs, dtype=float)
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    obs = abs(d.sum())
    rng = np.random.default_rng(seed)
    hits = 0
    chunk = max(1, int(2_000_000 // d.size))
    for start in range(0, n_perm, chunk):
        k = min(n_perm, start + chunk) - start
        signs = rng.integers(0, 2, size=(k, d.size)) * 2 - 1
        hits += int((np.abs(signs @ d) >= obs - 1e-12).sum())
    return float((hits + 1) / (n_perm + 1))


def _scale(scores: np.ndarray) -> tuple[float, str]:
    s = scores[~np.isnan(scores)]
    if s.size == 0 or (s.min() >= 0 and s.max() <= 1):
        return 100.0, "points"
    return 1.0, "raw"


def _unit(kind: MetricKind, g: pd.DataFrame) -> tuple[float, str]:
    if kind.paired and kind.unit == "points":
        return _scale(np.concatenate([g.score_a.to_numpy(), g.score_b.to_numpy()]))
    return kind.scale, kind.unit


def min_detectable_gap(d: np.ndarray, a: np.ndarray, b: np.ndarray, scale: float, eff: np.ndarray, alpha: float,
                       power: float) -> float:
    """The smallest |mean Δ| the paired items could detect (docs/method.md#task-resolution), in the row's unit.

    ``d``: per-item differences in the unit; ``a``/``b``: per-item raw scores; ``scale``: the unit's multiplier of a
    raw score; ``eff``: per-item weights. Right/wrong items of equal weight: McNemar at the observed share of
    discordant items (:func:`lm_diff.power.min_detectable_accuracy_gap`); otherwise the SD of ``d``
    (:func:`lm_diff.power.min_detectable_mean_gap`). NaN when no gap could be detected."""
    n = int(d.size)
    binary = (np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all() and np.allclose(eff, 1.0))
    if binary:
        m = min_detectable_accuracy_gap(n, float((a != b).mean()) if n else 0.0, alpha, power)
        return float("nan") if m is None else m * scale
    m = min_detectable_mean_gap(float(np.std(d, ddof=1)) if n > 1 else float("nan"), n, alpha, power)
    return float("nan") if m is None else m


def _corpus_row(task: str, g: pd.DataFrame, kind: MetricKind, sign: float, category: str) -> dict:
    la = lm_eval_score(kind, logged=list(g.raw_a))
    lb = lm_eval_score(kind, logged=list(g.raw_b))
    return {
        "level": "task", "name": task, "category": category, "metric": g.metric.iloc[0], "tasks": [task],
        "n": int(len(g)), "score_a": la * kind.scale, "score_b": lb * kind.scale, "delta": (lb - la) * kind.scale * sign,
        "ci_low": float("nan"), "ci_high": float("nan"), "p_value": float("nan"), "flips_up": 0, "flips_down": 0,
        "unit": kind.unit, "quantity": kind.quantity, "lm_eval_a": la, "lm_eval_b": lb, "test": _NO_TEST,
        "mds": float("nan"),
    }


def _pooled_tasks(tasks: list[str], units: dict[str, str]) -> list[str]:
    """Tasks a category/overall row pools: the accuracy-like ones (points or raw, as before); with none, tasks of one
    common unit (e.g. two perplexity tasks); otherwise none (their units cannot be added)."""
    generic = [t for t in tasks if units[t] in _GENERIC_UNITS]
    if generic:
        return generic
    return tasks if len({units[t] for t in tasks}) == 1 else []


def score_gaps(joined: pd.DataFrame, task_categories: Optional[Mapping[str, str]] = None,
               stats_cfg: Any = None) -> pd.DataFrame:
    """Δ = B − A per task, per category and overall on each task's compared quantity, with paired CIs and p-values.

    ``task_categories`` maps task → category (falls back to ``joined.attrs['task_categories']``, then
    ``uncategorized``). Metrics in [0, 1] are reported in points (×100). A task whose compared quantity is
    lower-is-better has its sign flipped so that a positive Δ always means "B better". Weighted kinds (perplexities:
    words/bytes; IFEval instruction lists: instructions) weight each document as lm-eval does within its task, so the
    task's Δ is the difference of lm-eval's pooled quantities. Category and overall rows pool documents of the
    accuracy-like tasks (each task weighted by its size, like lm-eval's ``weight_by_size``) and resample within each
    task; tasks with another unit keep their own rows only. Perplexity probes (``diff_probe_*``) pool into a
    ``probe`` row per category instead and stay out of the ``category`` and ``overall`` rows. Rows with a NaN score
    in either model are dropped. Every paired row carries ``mds`` (:func:`min_detectable_gap`; ``stats_cfg.power``).
    Returns a DataFrame with ``GAP_COLUMNS`` (level ∈ task, category, probe, overall).
    """
    cfg = stats_cfg or StatsConfig()
    cats = dict(joined.attrs.get("task_categories") or {})
    cats.update(task_categories or {})
    hib = joined.attrs.get("higher_is_better") or {}
    kinds: dict[str, MetricKind] = joined.attrs.get("kinds") or {}
    if joined.empty:
        return pd.DataFrame(columns=GAP_COLUMNS)
    df = joined.copy()
    if "weight" not in df:
        df["weight"] = 1.0
    df["category"] = df.task.map(lambda t: cats.get(t) or "uncategorized")
    rows, parts, units, quantities = [], [], {}, {}
    for t, g in df.groupby("task", sort=False):
        kind = kinds.get(t, MEAN)
        sign = 1.0 if hib.get(t, True) else -1.0
        if not kind.paired:
            rows.append(_corpus_row(t, g, kind, sign, g.category.iloc[0]))
            continue
        g = g.dropna(subset=["score_a", "score_b"])
        g = g[g.weight > 0]
        if g.empty:
            continue
        scale, units[t] = _unit(kind, g)
        quantities[t] = kind.quantity
        w = g.weight.to_numpy(dtype=float)
        eff = np.ones(len(g)) if (w == 1.0).all() else w * len(g) / w.sum()
        g = g.assign(eff=eff, unit_scale=scale,
                     x_a=g.score_a * scale * sign * eff, x_b=g.score_b * scale * sign * eff, a=g.score_a * scale * eff,
                     b=g.score_b * scale * eff,
                     lm_a=lm_eval_score(kind, g.score_a.to_numpy(), w), lm_b=lm_eval_score(kind, g.score_b.to_numpy(), w))
        g["d"] = g.x_b - g.x_a
        parts.append(g)
    if not parts and not rows:
        return pd.DataFrame(columns=GAP_COLUMNS)
    paired = pd.concat(parts) if parts else df.iloc[:0].assign(d=[], a=[], b=[], x_a=[], x_b=[], eff=[], unit_scale=[])
    paired["_stratum"] = pd.factorize(paired.task)[0]
    alpha, power = 1 - float(cfg.confidence), float(getattr(cfg, "power", 0.8))

    def summarise(level: str, name: str, g: pd.DataFrame, category: Optional[str]) -> dict:
        tasks = list(dict.fromkeys(g.task))
        row_units = {units[t] for t in tasks}
        row_quantities = {quantities[t] for t in tasks}
        metrics = sorted(set(g.metric))
        d = g.d.to_numpy()
        if len(tasks) > 1:
            delta = float(d.mean())
            lo, hi = _stratified_bootstrap(d, g._stratum.to_numpy(), cfg.bootstrap, cfg.confidence, cfg.seed)
        else:
            delta, lo, hi = paired_bootstrap_diff(g.x_a.to_numpy(), g.x_b.to_numpy(), n_boot=cfg.bootstrap,
                                                  confidence=cfg.confidence, seed=cfg.seed)
        return {
            "level": level, "name": name, "category": category,
            "metric": metrics[0] if len(metrics) == 1 else "mixed",
            "tasks": tasks, "n": int(len(g)), "score_a": float(g.a.mean()), "score_b": float(g.b.mean()),
            "delta": delta, "ci_low": lo, "ci_high": hi,
            "p_value": sign_flip_pvalue(d, n_perm=cfg.permutations, seed=cfg.seed),
            "flips_up": int((g.d > 0).sum()), "flips_down": int((g.d < 0).sum()),
            "unit": row_units.pop() if len(row_units) == 1 else "mixed",
            "quantity": row_quantities.pop() if len(row_quantities) == 1 else "mixed",
            "lm_eval_a": float(g.lm_a.iloc[0]) if level == "task" else float("nan"),
            "lm_eval_b": float(g.lm_b.iloc[0]) if level == "task" else float("nan"),
            "test": _PAIRED_TEST,
            "mds": min_detectable_gap(d, g.score_a.to_numpy(dtype=float), g.score_b.to_numpy(dtype=float),
                                      float(g.unit_scale.max()), g.eff.to_numpy(dtype=float), alpha, power),
        }

    task_rows = {r["name"]: r for r in rows}
    for t, g in paired.groupby("task", sort=False):
        task_rows[t] = summarise("task", t, g, g.category.iloc[0])
    out_rows = [task_rows[t] for t in dict.fromkeys(df.task) if t in task_rows]
    probe = paired.task.map(is_probe_task).to_numpy(dtype=bool) if len(paired) else np.zeros(0, dtype=bool)
    for level, part in (("category", paired[~probe]), ("probe", paired[probe])):
        for c, g in part.groupby("category", sort=True):
            keep = _pooled_tasks(list(dict.fromkeys(g.task)), units)
            if keep:
                out_rows.append(summarise(level, c, g[g.task.isin(keep)], c))
    keep = _pooled_tasks(list(dict.fromkeys(paired[~probe].task)), units)
    if keep:
        out_rows.append(summarise("overall", "overall", paired[~probe][paired[~probe].task.isin(keep)], None))
    out = pd.DataFrame(out_rows, columns=GAP_COLUMNS)
    out.attrs = {"confidence": cfg.confidence, "bootstrap": cfg.bootstrap, "models": joined.attrs.get("models")}
    return out
