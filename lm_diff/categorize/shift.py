"""Category shifts between two latent sets (docs/method.md#share-ratio, #permutation-null, #katz-interval): S = B-specific, T = the comparison set.

Per category c (``category_shift``): n_c^S, n_c^T, N_S, N_T; **count ratio** n_c^S/n_c^T − 1 and **share ratio**
(n_c^S/N_S)/(n_c^T/N_T) − 1 (both printed: the seed's formula is unknown, docs/method.md#share-ratio); a Katz log CI (Haldane +½) on the
share ratio; Fisher exact p per category and BH q across categories; optional activation-mass shares
M_c = Σ_{j∈S∩c} mass_j / Σ_{j∈S} mass_j (mass_j = E_x[f_j]·‖d_j‖) with percentile bootstrap CIs over latents;
optional hierarchical bootstrap CIs over crosscoder seeds then latents; optional label-permutation p-values.
Categories with n_S + n_T < ``min_count`` are marked ``insufficient``.

Labels may be multi-label or soft: counts become Σ_j π_{j,c}. Accepted label forms (per latent, in set order):
a category name, a list of names (weight 1 each), or a mapping name -> π; a DataFrame [latents × categories] of π;
or a mapping latent -> any of those. ``unassigned`` / ``none`` / an empty list mean no category (the latent still
counts in N). All ratio columns are "− 1" values (+1.517 = +151.7%), their CIs likewise.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from lm_diff.categorize.taxonomy import category_names
from lm_diff.config import StatsConfig
from lm_diff.errors import UserError
from lm_diff.power import fcr_confidence, min_detectable_ratio, permutation_sd
from lm_diff.stats import (
    _percentile,
    bh_qvalues,
    cluster_shift,
    count_ratio,
    fisher_exact,
    hierarchical_bootstrap,
    katz_share_ratio_ci,
    permutation_shift_null,
    share_ratio,
)

UNASSIGNED = "unassigned"
_NO_CATEGORY = {UNASSIGNED, "none", "", None}

__all__ = ["category_shift", "pooled_category_shift", "label_matrix", "tested_family", "UNASSIGNED"]


def _stats_params(stats_cfg: Any) -> tuple[float, int, int, float, int]:
    """(confidence, bootstrap, permutations, min_count, seed) from a StatsConfig, its defaults where ``None``."""
    cfg = stats_cfg if stats_cfg is not None else StatsConfig()
    return (float(cfg.confidence), int(cfg.bootstrap), int(cfg.permutations), float(cfg.min_count), int(cfg.seed))


def tested_family(df: pd.DataFrame) -> pd.Series:
    """The categories that enter Benjamini–Hochberg: taxonomy categories that are not ``insufficient``. The filter
    reads only how many latents (clusters) carry the category in S ∪ T, which the label-permutation null leaves
    unchanged, so it is independent of the p-values under the null and BH over the rest still controls the FDR
    (Bourgon et al. 2010); an insufficient category has no q (docs/method.md#tested-family)."""
    return (df["category"] != UNASSIGNED) & ~df["insufficient"].astype(bool)


def label_matrix(labels: Any, categories: Sequence[str], where: str = "labels") -> np.ndarray:
    """Label weights π as a [latents, categories] float matrix (see the module docstring for accepted forms)."""
    cats = list(categories)
    index = {c: i for i, c in enumerate(cats)}
    if isinstance(labels, pd.DataFrame):
        bad = [c for c in labels.columns if c not in index and c not in _NO_CATEGORY]
        if bad:
            raise UserError(f"{where}: column {bad[0]!r} is not a taxonomy category (valid: {', '.join(cats)})")
        return labels.reindex(columns=cats, fill_value=0.0).to_numpy(dtype=float)
    if isinstance(labels, Mapping):
        labels = list(labels.values())
    out = np.zeros((len(labels), len(cats)))
    for j, lab in enumerate(labels):
        if lab is None or isinstance(lab, str):
            items = {} if lab in _NO_CATEGORY else {lab: 1.0}
        elif isinstance(lab, Mapping):
            items = dict(lab)
        else:
            items = {c: 1.0 for c in lab}
        for c, w in items.items():
            if c in _NO_CATEGORY:
                continue
            if c not in index:
                raise UserError(f"{where}: latent {j} has category {c!r}, which is not in the taxonomy (valid: {', '.join(cats)})")
            if not 0 <= float(w) <= 1:
                raise UserError(f"{where}: latent {j} has weight {w} for {c!r}; soft labels must lie in [0, 1]")
            out[j, index[c]] += float(w)
    return out


def _mass_share_boot(pi: np.ndarray, mass: np.ndarray, n_boot: int, confidence: float, rng: np.random.Generator):
    """Mass share per category with a percentile bootstrap over latents: (share [C], lo [C], hi [C])."""
    C = pi.shape[1]
    if len(mass) == 0 or mass.sum() <= 0:
        nan = np.full(C, np.nan)
        return nan, nan, nan
    w = pi * mass[:, None]
    share = w.sum(0) / mass.sum()
    n = len(mass)
    boots = np.empty((n_boot, C))
    chunk = max(1, 4_000_000 // max(n * C, 1))
    for s in range(0, n_boot, chunk):
        e = min(n_boot, s + chunk)
        idx = rng.integers(0, n, size=(e - s, n))
        tot = mass[idx].sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            boots[s:e] = w[idx].sum(1) / tot[:, None]
    lo, hi = _percentile(boots, confidence)
    return share, lo, hi


def category_shift(
    S_labels: Any,
    T_labels: Any,
    taxonomy: Any,
    stats_cfg: Any = None,
    mass_S: Optional[Sequence[float]] = None,
    mass_T: Optional[Sequence[float]] = None,
    *,
    per_seed: Optional[Sequence[tuple[Any, Any]]] = None,
    permutation: bool = False,
    include_unassigned: bool = True,
) -> pd.DataFrame:
    """Per-category shift table between latent sets S and T (rows in taxonomy order, then ``unassigned``).

    Columns: ``category, n_S, n_T, N_S, N_T, share_S, share_T, count_ratio, share_ratio, share_ratio_lo,
    share_ratio_hi`` (Katz, Haldane ½), ``fisher_p, fisher_q`` (BH across taxonomy categories), ``insufficient``
    (n_S + n_T < min_count); with masses ``mass_share_S(_lo,_hi), mass_share_T(_lo,_hi), mass_ratio``; with
    ``per_seed`` = [(S_labels, T_labels) per crosscoder seed] ``boot_share_ratio_lo/_hi`` (hierarchical bootstrap:
    seeds, then latents); with ``permutation`` ``perm_p`` (label-permutation null, ``stats_cfg.permutations``).
    ``stats_cfg`` is a ``StatsConfig`` (confidence, bootstrap, permutations, min_count, seed).
    """
    conf, n_boot, n_perm, min_count, seed = _stats_params(stats_cfg)
    cats = category_names(taxonomy)
    piS = label_matrix(S_labels, cats, "S labels")
    piT = label_matrix(T_labels, cats, "T labels")
    N_S, N_T = len(piS), len(piT)
    names = list(cats)
    if include_unassigned:
        piS = np.concatenate([piS, (piS.sum(1) == 0)[:, None].astype(float)], axis=1)
        piT = np.concatenate([piT, (piT.sum(1) == 0)[:, None].astype(float)], axis=1)
        names.append(UNASSIGNED)
    nS, nT = piS.sum(0), piT.sum(0)
    rows = []
    for c, a, b in zip(names, nS, nT):
        ci = katz_share_ratio_ci(a, N_S, b, N_T, confidence=conf)
        rows.append(
            {
                "category": c,
                "n_S": a,
                "n_T": b,
                "N_S": N_S,
                "N_T": N_T,
                "share_S": a / N_S if N_S else np.nan,
                "share_T": b / N_T if N_T else np.nan,
                "count_ratio": count_ratio(a, b),
                "share_ratio": share_ratio(a, N_S, b, N_T),
                "share_ratio_lo": ci.lo - 1.0,
                "share_ratio_hi": ci.hi - 1.0,
                "fisher_p": fisher_exact(a, N_S, b, N_T) if N_S and N_T else np.nan,
                "insufficient": bool(a + b < min_count),
            }
        )
    df = pd.DataFrame(rows)
    is_cat = tested_family(df)
    df["fisher_q"] = np.nan
    if is_cat.any():
        df.loc[is_cat, "fisher_q"] = bh_qvalues(df.loc[is_cat, "fisher_p"].to_numpy())
    level = conf
    if getattr(stats_cfg, "fcr_intervals", True) and is_cat.any():
        level = fcr_confidence(df.loc[is_cat, "fisher_q"].tolist(), 1 - conf)
        cis = [katz_share_ratio_ci(a, N_S, b, N_T, confidence=level) for a, b in zip(nS, nT)]
        df["share_ratio_lo"], df["share_ratio_hi"] = [c.lo - 1.0 for c in cis], [c.hi - 1.0 for c in cis]
    df["ci_level"] = level
    power = float(getattr(stats_cfg, "power", 0.8))
    n_cat = max(int(is_cat.sum()), 1)
    w = np.concatenate([np.full(N_S, 1.0 / max(N_S, 1)), np.full(N_T, -1.0 / max(N_T, 1))])
    sd = permutation_sd(w, np.concatenate([piS, piT], axis=0))
    mds = [min_detectable_ratio(p0, N_S, N_T, x, (1 - conf) / n_cat, power)
           for p0, x in zip((nS + nT) / max(N_S + N_T, 1), sd)]
    df["mds_up"] = [np.nan if a is None or np.isinf(a) else a for a, _ in mds]
    df["mds_down"] = [np.nan if b is None else b for _, b in mds]
    rng = np.random.default_rng(seed)
    if mass_S is not None or mass_T is not None:
        for side, pi, mass in (("S", piS, mass_S), ("T", piT, mass_T)):
            if mass is None:
                df[f"mass_share_{side}"] = df[f"mass_share_{side}_lo"] = df[f"mass_share_{side}_hi"] = np.nan
                continue
            m = np.asarray(mass, dtype=float)
            if len(m) != len(pi):
                raise ValueError(f"mass_{side} has {len(m)} values for {len(pi)} latents")
            share, lo, hi = _mass_share_boot(pi, m, n_boot, conf, rng)
            df[f"mass_share_{side}"], df[f"mass_share_{side}_lo"], df[f"mass_share_{side}_hi"] = share, lo, hi
        with np.errstate(divide="ignore", invalid="ignore"):
            df["mass_ratio"] = df["mass_share_S"] / df["mass_share_T"] - 1.0
    if per_seed:
        data = []
        for s_lab, t_lab in per_seed:
            a = label_matrix(s_lab, cats, "per-seed S labels")
            b = label_matrix(t_lab, cats, "per-seed T labels")
            if include_unassigned:
                a = np.concatenate([a, (a.sum(1) == 0)[:, None].astype(float)], axis=1)
                b = np.concatenate([b, (b.sum(1) == 0)[:, None].astype(float)], axis=1)
            data.append((a, b))

        def stat(sample: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
            sS = sum(x[0].sum(0) for x in sample)
            sT = sum(x[1].sum(0) for x in sample)
            NS = sum(len(x[0]) for x in sample)
            NT = sum(len(x[1]) for x in sample)
            with np.errstate(divide="ignore", invalid="ignore"):
                return (sS / NS) / (sT / NT) - 1.0

        iv = hierarchical_bootstrap(data, stat, n_boot=n_boot, confidence=conf, seed=seed)
        df["boot_share_ratio_lo"], df["boot_share_ratio_hi"] = iv.lo, iv.hi
    if permutation:
        null = permutation_shift_null(piS, piT, n_perm=n_perm, seed=seed)
        df["perm_p"] = null["p"]
    df.attrs.update({"confidence": conf, "ci_level": level, "min_count": min_count, "N_S": N_S, "N_T": N_T})
    return df


def pooled_category_shift(
    per_seed: Sequence[tuple[Any, Any]],
    clusters: Sequence[tuple[Sequence[int], Sequence[int]]],
    taxonomy: Any,
    stats_cfg: Any = None,
    masses: Optional[Sequence[tuple[Sequence[float], Sequence[float]]]] = None,
    *,
    include_unassigned: bool = True,
    alternative: str = "two-sided",
) -> pd.DataFrame:
    """Category shift pooled over crosscoder seeds, with clusters of matched latents as the statistical unit.

    ``per_seed``: [(S_labels, T_labels)] per seed; ``clusters``: [(S cluster ids, T cluster ids)] per seed, in the
    same order (``controls.seed_clusters``: latents matched across seeds share an id; S and T ids must be disjoint
    when S and T come from different crosscoders). Counts are pooled over seeds (n_c^S = Σ_seeds n_c^{S_s}); the
    CI is a cluster bootstrap and ``p`` a cluster label-permutation test (``stats.cluster_shift``); ``q`` is BH
    across taxonomy categories. ``insufficient`` when fewer than ``min_count`` distinct clusters carry the category.
    Columns as :func:`category_shift` (pooled counts) plus ``p``, ``q``, ``clusters_S``, ``clusters_T``,
    ``clusters_c`` (clusters carrying the category), ``ci_level`` (the intervals' level: the FCR level
    1 − max(R, 1)·α/m unless ``stats.fcr_intervals`` is false), ``mds_up``/``mds_down`` (the smallest share ratio
    − 1 up and down detectable with ``stats.power`` at level α/m, what one category alone needs for q ≤ α; NaN:
    not detectable; docs/method.md#minimum-detectable-shift) and, with ``masses``, pooled ``mass_share_S``/``_T``.
    ``alternative``: of the permutation test (``"greater"``: S's share larger, as ``category_change`` asks)."""
    conf, n_boot, n_perm, min_count, seed = _stats_params(stats_cfg)
    cats = category_names(taxonomy)
    names = cats + ([UNASSIGNED] if include_unassigned else [])
    if len(clusters) != len(per_seed):
        raise ValueError(f"{len(per_seed)} seeds of labels but {len(clusters)} of cluster ids")
    rows_pi, rows_k, rows_S, rows_m = [], [], [], []
    for i, ((s_lab, t_lab), (s_ids, t_ids)) in enumerate(zip(per_seed, clusters)):
        for lab, ids, in_s, side in ((s_lab, s_ids, True, 0), (t_lab, t_ids, False, 1)):
            pi = label_matrix(lab, cats, "per-seed labels")
            if len(pi) != len(ids):
                raise ValueError(f"seed {i}: {len(pi)} labels but {len(ids)} cluster ids")
            if include_unassigned:
                pi = np.concatenate([pi, (pi.sum(1) == 0)[:, None].astype(float)], axis=1)
            rows_pi.append(pi)
            rows_k.append(np.asarray(ids, dtype=np.int64))
            rows_S.append(np.full(len(pi), in_s))
            m = masses[i][side] if masses is not None else np.full(len(pi), np.nan)
            rows_m.append(np.asarray(m, dtype=float))
    pi = np.concatenate(rows_pi) if rows_pi else np.zeros((0, len(names)))
    kid = np.concatenate(rows_k) if rows_k else np.zeros(0, np.int64)
    in_S = np.concatenate(rows_S) if rows_S else np.zeros(0, bool)
    mass = np.concatenate(rows_m) if rows_m else np.zeros(0)
    uniq, k = np.unique(kid, return_inverse=True)
    K = len(uniq)
    u = np.bincount(k, weights=in_S.astype(float), minlength=K)
    v = np.bincount(k, weights=(~in_S).astype(float), minlength=K)
    size = np.bincount(k, minlength=K).astype(float)
    lab = np.zeros((K, len(names)))
    np.add.at(lab, k, pi)
    lab /= np.maximum(size, 1)[:, None]
    res = cluster_shift(u, v, lab, n_boot=n_boot, n_perm=n_perm, confidence=conf, seed=seed, alternative=alternative)
    nS_exact = pi[in_S].sum(0)
    nT_exact = pi[~in_S].sum(0)
    N_S, N_T = float(in_S.sum()), float((~in_S).sum())
    carried = (lab > 0).sum(0)
    df = pd.DataFrame({
        "category": names,
        "n_S": nS_exact, "n_T": nT_exact, "N_S": N_S, "N_T": N_T,
        "share_S": nS_exact / N_S if N_S else np.nan, "share_T": nT_exact / N_T if N_T else np.nan,
        "count_ratio": [count_ratio(a, b) for a, b in zip(nS_exact, nT_exact)],
        "share_ratio": [share_ratio(a, N_S, b, N_T) for a, b in zip(nS_exact, nT_exact)],
        "share_ratio_lo": res["lo"], "share_ratio_hi": res["hi"],
        "p": res["p"],
        "insufficient": carried < min_count,
        "clusters_S": int((u > 0).sum()), "clusters_T": int((v > 0).sum()), "clusters_c": carried,
    })
    is_cat = tested_family(df)
    df["q"] = np.nan
    if is_cat.any():
        df.loc[is_cat, "q"] = bh_qvalues(df.loc[is_cat, "p"].to_numpy())
    level = conf
    if getattr(stats_cfg, "fcr_intervals", True) and is_cat.any():
        level = fcr_confidence(df.loc[is_cat, "q"].tolist(), 1 - conf)
        df["share_ratio_lo"], df["share_ratio_hi"] = _percentile(res["boot"], level)
    # The cluster bootstrap alone undercovers when a category has a handful of clusters in one set (a resample cannot
    # draw more of them than exist): the interval is the hull of it and a Katz interval on cluster-deflated counts
    # (each set's counts scaled by its clusters per latent), docs/method.md#pooling-seeds.
    kS, kT = float((u > 0).sum()), float((v > 0).sum())
    for i, (a, b) in enumerate(zip(nS_exact, nT_exact)):
        if N_S > 0 and N_T > 0:
            kz = katz_share_ratio_ci(a * kS / N_S, kS, b * kT / N_T, kT, confidence=level)
            df.loc[i, "share_ratio_lo"] = np.fmin(df.loc[i, "share_ratio_lo"], kz.lo - 1.0)
            df.loc[i, "share_ratio_hi"] = np.fmax(df.loc[i, "share_ratio_hi"], kz.hi - 1.0)
    df["ci_level"] = level
    power = float(getattr(stats_cfg, "power", 0.8))
    n_cat = max(int(is_cat.sum()), 1)
    mds = [min_detectable_ratio(p0, N_S, N_T, sd, (1 - conf) / n_cat, power)
           for p0, sd in zip((nS_exact + nT_exact) / max(N_S + N_T, 1), res["null_sd"])]
    df["mds_up"] = [np.nan if a is None or np.isinf(a) else a for a, _ in mds]
    df["mds_down"] = [np.nan if b is None else b for _, b in mds]
    if masses is not None:
        for side, sel in (("S", in_S), ("T", ~in_S)):
            m = np.nan_to_num(mass[sel])
            tot = m.sum()
            df[f"mass_share_{side}"] = (pi[sel] * m[:, None]).sum(0) / tot if tot > 0 else np.nan
        with np.errstate(divide="ignore", invalid="ignore"):
            df["mass_ratio"] = df["mass_share_S"] / df["mass_share_T"] - 1.0
    df.attrs.update({"confidence": conf, "ci_level": level, "power": power, "mds_alpha": (1 - conf) / n_cat,
                     "min_count": min_count, "N_S": N_S, "N_T": N_T, "seeds": len(per_seed), "clusters": K,
                     "method": "pooled over seeds; cluster bootstrap CI (FCR level); cluster label-permutation p"})
    return df
