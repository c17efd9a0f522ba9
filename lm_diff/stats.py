"""Pure statistics used by the diff, shift and link stages.

Every function takes plain numbers / numpy arrays, has no side effects, and is tested against hand-computed values
or scipy. scipy does the job wherever it can: Benjamini-Hochberg (``false_discovery_control``), Fisher exact,
Mann-Whitney over many latents at once (``mannwhitneyu(axis=0)``), normal quantiles, point-biserial. Hand-written is
only what no library offers: the Katz log interval of a share ratio with Haldane's correction, the bootstraps
(paired, hierarchical over seeds then units, cluster), the label-permutation nulls of the category shift, Cohen's
kappa on arbitrary hashable labels without scikit-learn (not a dependency).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, NamedTuple, Optional, Sequence

import numpy as np
from scipy import stats as _st

from lm_diff.power import permutation_sd

__all__ = [
    "Interval", "bh_qvalues", "count_ratio", "share_ratio", "katz_share_ratio_ci", "fisher_exact",
    "mannwhitney_auroc_columns", "bootstrap_mean_ci", "paired_bootstrap_diff", "hierarchical_bootstrap", "permutation_shift_null",
    "cluster_shift", "cohens_kappa", "point_biserial", "z_value",
]


class Interval(NamedTuple):
    """A point estimate with a two-sided confidence interval (unpacks as ``est, lo, hi``)."""

    estimate: Any
    lo: Any
    hi: Any


def z_value(confidence: float = 0.95) -> float:
    """Two-sided standard-normal quantile z_{1-alpha/2} for a confidence level (0.95 -> 1.95996)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(_st.norm.ppf(0.5 + confidence / 2))


# ----------------------------------------------------------------------------------------------------------------------
# Multiple testing


def bh_qvalues(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values (step-up adjusted p-values), same shape as ``p``.

    q_(i) = min_{k >= i} min(1, m p_(k) / k) over the sorted p-values (``scipy.stats.false_discovery_control``);
    NaN p-values are ignored (m counts only the finite ones) and stay NaN. Reject at FDR level alpha where q <= alpha.
    """
    p = np.asarray(p, dtype=float)
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = _st.false_discovery_control(np.clip(p[ok], 0.0, 1.0), method="bh")
    return q


# ----------------------------------------------------------------------------------------------------------------------
# Category shift ratios (docs/method.md#share-ratio, #katz-interval)


def count_ratio(n_S: float, n_T: float) -> float:
    """Count ratio n_S / n_T - 1 (the formula that reproduces the seed's headline numbers, e.g. 73/29 -> +1.517).

    Returns +inf when n_T = 0 < n_S and NaN when both are 0.
    """
    if n_T == 0:
        return float("nan") if n_S == 0 else float("inf")
    return n_S / n_T - 1.0


def share_ratio(n_S: float, N_S: float, n_T: float, N_T: float) -> float:
    """Share ratio (n_S/N_S) / (n_T/N_T) - 1. +inf when n_T = 0 < n_S; NaN when n_S = n_T = 0 or a set is empty."""
    if N_S <= 0 or N_T <= 0:
        return float("nan")
    if n_T == 0:
        return float("nan") if n_S == 0 else float("inf")
    return (n_S / N_S) / (n_T / N_T) - 1.0


def katz_share_ratio_ci(
    n_S: float, N_S: float, n_T: float, N_T: float, confidence: float = 0.95, haldane: str = "always"
) -> Interval:
    """Katz log interval for the share ratio R = (n_S/N_S)/(n_T/N_T) (returned as R, not R - 1).

    log R +- z sqrt(1/n_S - 1/N_S + 1/n_T - 1/N_T)   (docs/method.md#katz-interval)

    Haldane +1/2: ``always`` (default) adds 1/2 to each of the four cells of the 2x2 table (n -> n + 1/2, N -> N + 1)
    before computing the centre and the standard error, which keeps zero counts finite and reduces small-count bias;
    ``zero`` does so only when a cell is zero; ``never`` uses raw counts (infinite bounds when a count is zero).
    The estimate returned is the *raw* ratio (n_S/N_S)/(n_T/N_T); with ``always`` the interval is centred on the
    corrected ratio, so for tiny counts the raw estimate can sit off-centre. Soft (non-integer) counts are allowed.

    Hand-written because ``scipy.stats.contingency.relative_risk`` (the same Katz interval) takes integer counts only,
    so it can do neither soft labels nor Haldane's +1/2; with integer counts and ``haldane="never"`` the two agree.
    """
    if haldane not in ("always", "zero", "never"):
        raise ValueError(f"haldane must be 'always', 'zero' or 'never', got {haldane!r}")
    if N_S <= 0 or N_T <= 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    est = share_ratio(n_S, N_S, n_T, N_T) + 1.0
    cells = (n_S, N_S - n_S, n_T, N_T - n_T)
    if haldane == "always" or (haldane == "zero" and min(cells) <= 0):
        a, NA, b, NB = n_S + 0.5, N_S + 1.0, n_T + 0.5, N_T + 1.0
    else:
        a, NA, b, NB = float(n_S), float(N_S), float(n_T), float(N_T)
    if a <= 0 or b <= 0:
        lo = 0.0 if a <= 0 else float("nan")
        hi = float("inf") if b <= 0 else float("nan")
        return Interval(est, lo, hi)
    log_r = np.log((a / NA) / (b / NB))
    se = np.sqrt(max(1 / a - 1 / NA + 1 / b - 1 / NB, 0.0))
    z = z_value(confidence)
    return Interval(est, float(np.exp(log_r - z * se)), float(np.exp(log_r + z * se)))


def fisher_exact(n_S: float, N_S: float, n_T: float, N_T: float, alternative: str = "two-sided") -> float:
    """Fisher exact p-value on [[n_S, N_S - n_S], [n_T, N_T - n_T]] (scipy). Soft counts are rounded to integers."""
    table = np.rint([[n_S, N_S - n_S], [n_T, N_T - n_T]]).astype(int)
    if (table < 0).any():
        raise ValueError(f"counts must satisfy 0 <= n <= N, got n_S={n_S}, N_S={N_S}, n_T={n_T}, N_T={N_T}")
    if table.sum() == 0:
        return float("nan")
    return float(_st.fisher_exact(table, alternative=alternative)[1])


# ----------------------------------------------------------------------------------------------------------------------
# Mann-Whitney U / AUROC


def mannwhitney_auroc_columns(
    pos_PL: np.ndarray, neg_PL: np.ndarray, alternative: str = "greater", continuity: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and Mann-Whitney p-value for every column (latent) at once.

    pos_PL: [n1, L] scores of the positive group, neg_PL: [n0, L] of the negative group (1-d arrays are one column).
    AUROC = U / (n1 n0) = P[pos > neg] + 1/2 P[pos = neg]; the p-value is ``scipy.stats.mannwhitneyu(axis=0,
    method="asymptotic")``: the normal approximation with tie correction and (``continuity``) a 0.5 continuity
    correction; ``alternative="greater"`` tests pos stochastically larger. A constant column gives AUROC 0.5, p = 1;
    an empty group gives NaN.
    """
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(f"alternative must be greater, less or two-sided, got {alternative!r}")
    pos = np.asarray(pos_PL, dtype=np.float64)
    neg = np.asarray(neg_PL, dtype=np.float64)
    if pos.ndim == 1:
        pos, neg = pos[:, None], neg[:, None]
    n1, n0, L = pos.shape[0], neg.shape[0], pos.shape[1]
    if n1 == 0 or n0 == 0:
        return np.full(L, np.nan), np.full(L, np.nan)
    res = _st.mannwhitneyu(pos, neg, alternative=alternative, use_continuity=continuity, axis=0, method="asymptotic")
    return np.asarray(res.statistic, dtype=np.float64) / (n1 * n0), np.asarray(res.pvalue, dtype=np.float64)


# ----------------------------------------------------------------------------------------------------------------------
# Bootstrap


def _percentile(samples: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval ignoring NaN resamples (all-NaN columns give NaN without a warning)."""
    a = (1 - confidence) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanquantile(samples, a, axis=0), np.nanquantile(samples, 1 - a, axis=0)


def bootstrap_mean_ci(x: Sequence[float], n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap CI of the mean of ``x`` (resampling elements with replacement)."""
    x = np.asarray(x, dtype=float)
    if x.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // max(x.size, 1))
    for s in range(0, n_boot, chunk):
        e = min(n_boot, s + chunk)
        means[s:e] = x[rng.integers(0, x.size, size=(e - s, x.size))].mean(axis=1)
    lo, hi = _percentile(means, confidence)
    return Interval(float(x.mean()), float(lo), float(hi))


def paired_bootstrap_diff(
    a: Sequence[float], b: Sequence[float], n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """Paired percentile bootstrap CI of mean(b) - mean(a) over documents.

    ``a[i]`` and ``b[i]`` are the scores of the *same* document under models A and B; documents (pairs) are resampled
    together, which keeps the per-document correlation and gives a much tighter interval than resampling each model
    separately.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise ValueError(f"paired scores must have the same shape, got {a.shape} and {b.shape}")
    return bootstrap_mean_ci(b - a, n_boot=n_boot, confidence=confidence, seed=seed)


def hierarchical_bootstrap(
    data_per_seed: Sequence[Sequence[np.ndarray]],
    statistic: Callable[[list[tuple[np.ndarray, ...]]], Any],
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Two-level percentile bootstrap: resample seeds with replacement, then the rows of each array within each drawn
    seed with replacement (each array independently, e.g. the S latents and the T latents of one crosscoder seed).

    data_per_seed: one tuple of arrays per seed (rows = units such as latents). statistic: receives the list of
    resampled tuples (one per drawn seed) and returns a scalar or a 1-d array (e.g. one value per category).
    The estimate is ``statistic`` on the original data. NaN statistics (e.g. 0/0) are ignored in the quantiles.
    """
    data = [tuple(np.asarray(a) for a in seed_data) for seed_data in data_per_seed]
    if not data:
        raise ValueError("hierarchical_bootstrap needs at least one seed")
    rng = np.random.default_rng(seed)
    est = np.asarray(statistic(data), dtype=float)
    out = np.empty((n_boot,) + est.shape)
    S = len(data)
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(n_boot):
            seeds = rng.integers(0, S, size=S) if S > 1 else np.zeros(1, dtype=int)
            sample = []
            for s in seeds:
                sample.append(tuple(a[rng.integers(0, len(a), size=len(a))] if len(a) else a for a in data[s]))
            out[i] = statistic(sample)
    lo, hi = _percentile(out, confidence)
    if est.ndim == 0:
        return Interval(float(est), float(lo), float(hi))
    return Interval(est, lo, hi)


# ----------------------------------------------------------------------------------------------------------------------
# Permutation null for category shifts (docs/method.md#permutation-null)


def permutation_shift_null(
    S_PC: np.ndarray, T_PC: np.ndarray, n_perm: int = 10_000, seed: int = 0, chunk: int = 1000
) -> dict[str, np.ndarray]:
    """Label-permutation null for category shifts: pool the latents of S and T, reassign them to sets of the original
    sizes at random, and recompute the share difference p_c^S - p_c^T for every category.

    S_PC, T_PC: label matrices [latents, categories] (0/1 or soft pi). Returns ``observed`` (share differences),
    ``p`` (two-sided, (1 + #{|null| >= |obs|}) / (1 + n_perm)), ``null_lo``/``null_hi`` (2.5% / 97.5% of the null).
    The share difference is used (not the ratio) because it stays finite when a category is absent from T.
    """
    S = np.asarray(S_PC, dtype=float)
    T = np.asarray(T_PC, dtype=float)
    if S.ndim == 1:
        S, T = S[:, None], T[:, None]
    nS, nT = len(S), len(T)
    C = S.shape[1]
    if nS == 0 or nT == 0:
        nan = np.full(C, np.nan)
        return {"observed": nan, "p": nan, "null_lo": nan, "null_hi": nan}
    pooled = np.concatenate([S, T], axis=0)
    total = pooled.sum(axis=0)
    obs = S.mean(axis=0) - T.mean(axis=0)
    rng = np.random.default_rng(seed)
    null = np.empty((n_perm, C))
    n = nS + nT
    for s in range(0, n_perm, chunk):
        e = min(n_perm, s + chunk)
        perm = np.argsort(rng.random((e - s, n)), axis=1)[:, :nS]
        sS = pooled[perm].sum(axis=1)  # [chunk, C]
        null[s:e] = sS / nS - (total - sS) / nT
    exceed = (np.abs(null) >= np.abs(obs) - 1e-12).sum(axis=0)
    p = (1 + exceed) / (1 + n_perm)
    return {"observed": obs, "p": p, "null_lo": np.quantile(null, 0.025, axis=0), "null_hi": np.quantile(null, 0.975, axis=0)}


def cluster_shift(
    in_S_K: Sequence[float],
    in_T_K: Sequence[float],
    labels_KC: np.ndarray,
    n_boot: int = 2000,
    n_perm: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    alternative: str = "two-sided",
) -> dict[str, np.ndarray]:
    """Category shift between two sets whose members come in clusters (one cluster = the same feature found by
    several crosscoder seeds), with inference at the cluster level.

    in_S_K, in_T_K: per cluster k, how many of its members are in S and in T (e.g. 3 = B-specific in all three seeds);
    labels_KC: the cluster's label weights π_kc (its members' mean). Pooled counts n_c^S = Σ_k in_S_k π_kc,
    N_S = Σ_k in_S_k (likewise T). Returns per category ``share_ratio`` R_c − 1 with R_c = (n_c^S/N_S)/(n_c^T/N_T),
    ``lo``/``hi`` (percentile cluster bootstrap: resample clusters with replacement), ``p`` (two-sided
    cluster label-permutation test of the share difference: shuffle π across clusters, keeping each cluster's
    membership; (1 + #{|null| ≥ |obs|}) / (1 + n_perm); ``alternative="greater"`` / ``"less"``: one-sided, counting
    null ≥ obs / null ≤ obs), and the pooled ``n_S``, ``n_T``, ``N_S``, ``N_T``.
    Treating clusters, not latents, as the unit keeps a feature that every seed finds from counting as independent
    evidence; with one seed and singleton clusters ``p`` is the latent-level permutation test.
    """
    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(f"alternative must be two-sided, greater or less, got {alternative!r}")
    u = np.asarray(in_S_K, dtype=float)
    v = np.asarray(in_T_K, dtype=float)
    L = np.asarray(labels_KC, dtype=float)
    if L.ndim == 1:
        L = L[:, None]
    if not (len(u) == len(v) == len(L)):
        raise ValueError(f"cluster arrays differ in length: {len(u)}, {len(v)}, {len(L)}")
    K, C = L.shape
    N_S, N_T = u.sum(), v.sum()
    nS, nT = u @ L, v @ L
    out = {"n_S": nS, "n_T": nT, "N_S": np.full(C, N_S), "N_T": np.full(C, N_T)}
    nan = np.full(C, np.nan)
    if N_S == 0 or N_T == 0:
        out.update(share_ratio=nan, lo=nan, hi=nan, p=nan, null_sd=nan, boot=np.full((1, C), np.nan))
        return out
    with np.errstate(divide="ignore", invalid="ignore"):
        out["share_ratio"] = (nS / N_S) / (nT / N_T) - 1.0
    rng = np.random.default_rng(seed)
    boots = np.empty((n_boot, C))
    chunk = max(1, 2_000_000 // max(K * C, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        for s in range(0, n_boot, chunk):
            e = min(n_boot, s + chunk)
            idx = rng.integers(0, K, size=(e - s, K))
            bu, bv = u[idx], v[idx]  # [b, K]
            bS = np.einsum("bk,bkc->bc", bu, L[idx])
            bT = np.einsum("bk,bkc->bc", bv, L[idx])
            boots[s:e] = (bS / bu.sum(1, keepdims=True)) / (bT / bv.sum(1, keepdims=True)) - 1.0
    out["lo"], out["hi"] = _percentile(boots, confidence)
    out["boot"] = boots
    obs = nS / N_S - nT / N_T
    w = u / N_S - v / N_T  # the share difference is Σ_k w_k π_kc
    out["null_sd"] = permutation_sd(w, L)
    null = np.empty((n_perm, C))
    for s in range(0, n_perm, chunk):
        e = min(n_perm, s + chunk)
        perm = np.argsort(rng.random((e - s, K)), axis=1)
        null[s:e] = np.einsum("k,bkc->bc", w, L[perm])
    sg = {"greater": 1.0, "less": -1.0}.get(alternative, 0.0)  # 0: two-sided
    exceed = ((sg * null >= sg * obs - 1e-12) if sg else (np.abs(null) >= np.abs(obs) - 1e-12)).sum(axis=0)
    out["p"] = (1 + exceed) / (1 + n_perm)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Agreement and association


def cohens_kappa(a: Sequence[Any], b: Sequence[Any], labels: Optional[Sequence[Any]] = None) -> float:
    """Cohen's kappa between two raters' labels on the same items: (p_o - p_e) / (1 - p_e).

    p_o is the observed agreement, p_e the chance agreement from the two raters' marginals (``labels``, if given,
    fixes the label set; a label outside it is a ValueError). 1 when the raters agree perfectly, 0 at chance level.
    Degenerate case: when both raters use one and the same label, p_e = p_o = 1 and kappa is 0/0, undefined; this
    returns NaN, like ``sklearn.metrics.cohen_kappa_score`` (its ``replace_undefined_by`` default), because there is
    no variation from which to tell agreement from chance. NaN for no items as well.
    """
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"raters must label the same items, got {len(a)} and {len(b)} labels")
    if not a:
        return float("nan")
    cats = list(labels) if labels is not None else sorted(set(a) | set(b), key=str)
    index = {c: i for i, c in enumerate(cats)}
    outside = [x for x in a + b if x not in index]
    if outside:
        raise ValueError(f"label {outside[0]!r} is not in labels {cats}")
    m = np.zeros((len(cats), len(cats)))
    for x, y in zip(a, b):
        m[index[x], index[y]] += 1
    n = m.sum()
    po = np.trace(m) / n
    pe = float((m.sum(0) * m.sum(1)).sum() / n**2)
    if pe >= 1.0:
        return float("nan")
    return float((po - pe) / (1 - pe))


def point_biserial(
    x: Sequence[float], y: Sequence[float], n_perm: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Point-biserial (= Pearson) correlation between ``x`` and ``y`` with a two-sided permutation p-value
    (1 + #{|r_perm| >= |r|}) / (1 + n_perm), permuting ``y``. One of the two is usually binary or ternary
    (per-document score change B - A), the other continuous (category activation). NaN if either is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-d of equal length, got {x.shape} and {y.shape}")
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    r = float(_st.pointbiserialr(x, y)[0])
    xc = (x - x.mean()) / np.linalg.norm(x - x.mean())
    yc = (y - y.mean()) / np.linalg.norm(y - y.mean())
    rng = np.random.default_rng(seed)
    exceed = 0
    chunk = max(1, 1_000_000 // len(x))
    for s in range(0, n_perm, chunk):
        e = min(n_perm, s + chunk)
        perm = np.argsort(rng.random((e - s, len(y))), axis=1)
        rp = yc[perm] @ xc
        exceed += int((np.abs(rp) >= abs(r) - 1e-12).sum())
    return r, (1 + exceed) / (1 + n_perm)
