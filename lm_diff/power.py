"""What a category-shift test can resolve: the minimum detectable shift and false-coverage-adjusted intervals.

Pure functions over numbers (docs/method.md#minimum-detectable-shift, #fcr-intervals); the shift stage calls them.

- :func:`permutation_sd`: the exact standard deviation of the cluster label-permutation null of the share
  difference (``stats.cluster_shift``'s test), in closed form: shuffling π over K clusters is sampling without
  replacement, so Var(Σ_k w_k π_σ(k)) = Σ_k (w_k − w̄)² · Σ_k (π_k − π̄)² / (K − 1).
- :func:`min_detectable_ratio`: the smallest share ratio (up and down) the run could have detected at level α with
  the given power, from that SD (normal approximation of the permutation null; the SD is held at its null value).
- :func:`fcr_confidence`: the Benjamini–Yekutieli (2005) false-coverage-rate level 1 − R·α/m for the intervals of
  m categories when R of them are selected at q ≤ α, so "the CI excludes no change" means what a discovery means.

What a benchmark task of n items can resolve (docs/method.md#task-resolution):

- :func:`paired_binary_power` / :func:`min_detectable_accuracy_gap`: two models scored right/wrong on the same n
  items; McNemar's test in its normal approximation (Connor 1987), power Φ((√n·|δ| − z_{1−α/2}·√ψ) / √(ψ − δ²)) for
  an accuracy difference δ with a share ψ of discordant items; the smallest δ reaching the power.
- :func:`min_detectable_mean_gap`: a paired difference of per-item quantities (per-document log-likelihoods of a
  perplexity probe) with SD σ over n items: (z_{1−α/2} + z_power)·σ/√n.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm

__all__ = ["permutation_sd", "min_detectable_ratio", "fcr_confidence", "paired_binary_power",
           "min_detectable_accuracy_gap", "min_detectable_mean_gap"]


def permutation_sd(w_K: Sequence[float], labels_KC: np.ndarray) -> np.ndarray:
    """SD per category of Σ_k w_k π_σ(k),c over uniform permutations σ of the K clusters.

    ``w_K``: each cluster's weight in the statistic (for the share difference u_k/N_S − v_k/N_T);
    ``labels_KC``: the clusters' label weights π. Exact (no simulation); 0 for K < 2."""
    w = np.asarray(w_K, dtype=float)
    L = np.asarray(labels_KC, dtype=float)
    if L.ndim == 1:
        L = L[:, None]
    K = len(w)
    if K < 2:
        return np.zeros(L.shape[1])
    sw = ((w - w.mean()) ** 2).sum()
    sx = ((L - L.mean(axis=0)) ** 2).sum(axis=0)
    return np.sqrt(sw * sx / (K - 1))


def min_detectable_ratio(p0: float, N_S: float, N_T: float, sd: float, alpha: float,
                         power: float = 0.8) -> tuple[Optional[float], Optional[float]]:
    """(up, down): the smallest share ratio R − 1 above 0 and the largest below 0 that a two-sided test at level
    ``alpha`` detects with probability ``power``, for a category whose pooled share over S ∪ T is ``p0``.

    The detectable share difference is d* = (z_{1−α/2} + z_power)·sd; it is split between the sets so that the pooled
    share stays p0 (p_S = p0 + d*·N_T/N, p_T = p0 − d*·N_S/N for a gain, mirrored for a loss). ``up`` is +inf when
    only a category absent from T could be detected; ``down`` is −1.0 when only a complete loss could; ``None`` when
    no shift of that direction is detectable at all (d* larger than the room the pooled share leaves), when the sets
    are empty, p0 is 0 or 1, or the SD is undefined."""
    if not (N_S > 0 and N_T > 0) or not (0 < p0 < 1) or not math.isfinite(sd):
        return None, None
    d = (norm.ppf(1 - alpha / 2) + norm.ppf(power)) * sd
    N = N_S + N_T
    out: list[Optional[float]] = []
    for sign in (1, -1):
        p_S = p0 + sign * d * N_T / N
        p_T = p0 - sign * d * N_S / N
        if min(p_S, p_T) < -1e-12 or max(p_S, p_T) > 1 + 1e-12:
            out.append(None)  # the pooled share leaves no room for a shift this large
        elif p_T <= 1e-12:
            out.append(math.inf)
        else:
            out.append(max(p_S, 0.0) / p_T - 1.0)
    return out[0], out[1]


def fcr_confidence(q_values: Sequence[float], alpha: float) -> float:
    """The FCR-adjusted confidence level 1 − max(R, 1)·α/m for m categories of which R have q ≤ α (NaN q values are
    not categories: they are ignored). With R = m it is the plain 1 − α."""
    q = np.asarray([x for x in q_values if x is not None and not (isinstance(x, float) and math.isnan(x))], dtype=float)
    m = len(q)
    if m == 0:
        return 1 - alpha
    R = int((q <= alpha).sum())
    return 1 - max(R, 1) * alpha / m


def paired_binary_power(delta: float, n: int, discordant: float, alpha: float) -> float:
    """Power of the two-sided McNemar test (normal approximation, Connor 1987) at level ``alpha`` for an accuracy
    difference ``delta`` (a proportion, B − A) on ``n`` paired items of which a share ``discordant`` (ψ) is right in
    exactly one model: Φ((√n·|δ| − z_{1−α/2}·√ψ) / √(ψ − δ²)). ψ below |δ| is impossible (a gap needs as many
    discordant items) and is raised to |δ|; ψ = δ² (every discordant item one way, ψ = |δ| = 1) has power 1 or 0."""
    d = abs(float(delta))
    if n <= 0 or d == 0:
        return alpha / 2 if d == 0 else 0.0
    psi = min(1.0, max(float(discordant), d))
    num = math.sqrt(n) * d - norm.ppf(1 - alpha / 2) * math.sqrt(psi)
    var = psi - d * d
    if var <= 1e-15:
        return 1.0 if num > 0 else 0.0
    return float(norm.cdf(num / math.sqrt(var)))


def min_detectable_accuracy_gap(n: int, discordant: float, alpha: float, power: float = 0.8) -> Optional[float]:
    """The smallest accuracy difference (a proportion in (0, 1]) that a paired comparison of two models on ``n``
    items detects with probability ``power`` at two-sided level ``alpha``, when a share ``discordant`` of the items is
    expected right in exactly one model (McNemar, :func:`paired_binary_power`).

    ``discordant`` is the planning value of ψ: the observed share of items the models disagree on. At ceiling
    (ψ = 0: both right everywhere) it is the gap whose every item flips one way (ψ = δ), the best case a size of n
    allows. The power rises with δ (ψ held, or ψ = δ), so the root is unique. None when no gap of at most 1 reaches
    the power (n too small)."""
    if n <= 0:
        return None
    if paired_binary_power(1.0, n, 1.0, alpha) < power:
        return None
    return float(brentq(lambda d: paired_binary_power(d, n, discordant, alpha) - power, 1e-12, 1.0, xtol=1e-12))


def min_detectable_mean_gap(sd: float, n: int, alpha: float, power: float = 0.8) -> Optional[float]:
    """The smallest mean paired difference a two-sided test at level ``alpha`` detects with probability ``power``
    on ``n`` items whose paired differences have SD ``sd`` (normal approximation): (z_{1−α/2} + z_power)·sd/√n.
    None for n < 2 or an undefined SD."""
    if n < 2 or not math.isfinite(sd) or sd < 0:
        return None
    return float((norm.ppf(1 - alpha / 2) + norm.ppf(power)) * sd / math.sqrt(n))
