"""Minimum detectable shift and FCR intervals (lm_diff.power): hand values, the exact permutation SD against
simulation, and the stated power against the cluster permutation test it describes."""

import math

import numpy as np
import pytest
from scipy.stats import norm

from lm_diff.power import fcr_confidence, min_detectable_ratio, permutation_sd
from lm_diff.stats import cluster_shift


def test_permutation_sd_is_exact():
    rng = np.random.default_rng(1)
    w = rng.normal(size=40)
    L = (rng.random((40, 3)) < [0.1, 0.4, 0.7]).astype(float)
    draws = np.array([w @ L[rng.permutation(40)] for _ in range(20000)])
    assert permutation_sd(w, L) == pytest.approx(draws.std(axis=0), rel=0.03)
    # hand value: w = (1, -1), x = (1, 0): the statistic is ±1 with equal probability, SD 1
    assert permutation_sd([1.0, -1.0], np.array([[1.0], [0.0]]))[0] == pytest.approx(1.0)
    assert permutation_sd([1.0], np.array([[1.0]]))[0] == 0.0


def test_min_detectable_ratio_hand_values():
    # d* = (z_.975 + z_.8) * 0.05 = 0.140079; split over equal sets around p0 = 0.2
    up, down = min_detectable_ratio(0.2, 100, 100, 0.05, 0.05, 0.8)
    d = (1.959964 + 0.841621) * 0.05
    assert up == pytest.approx((0.2 + d / 2) / (0.2 - d / 2) - 1, rel=1e-5)
    assert down == pytest.approx((0.2 - d / 2) / (0.2 + d / 2) - 1, rel=1e-5)
    assert up == pytest.approx(1.0779, abs=1e-3) and down == pytest.approx(-0.5187, abs=1e-3)
    # a shift larger than the pooled share allows is not detectable; exactly reaching p_T = 0 is "absent from T"
    assert min_detectable_ratio(0.01, 100, 100, 0.05, 0.05) == (None, None)
    d_exact = (norm.ppf(0.975) + norm.ppf(0.8)) * 0.05
    up, _ = min_detectable_ratio(d_exact / 2, 100, 100, 0.05, 0.05, 0.8)
    assert up == math.inf
    assert min_detectable_ratio(0.2, 0, 100, 0.05, 0.05) == (None, None)
    assert min_detectable_ratio(0.0, 100, 100, 0.05, 0.05) == (None, None)


def test_min_detectable_shift_has_the_stated_power():
    """Plant exactly the minimum detectable gain in clusters of one latent each; the cluster permutation test must
    reject at level alpha in about `power` of the draws (normal approximation: within ±0.1)."""
    rng = np.random.default_rng(0)
    N_S = N_T = 120
    p0, alpha = 0.25, 0.05
    u = np.r_[np.ones(N_S), np.zeros(N_T)]
    v = 1 - u
    w = u / N_S - v / N_T
    # the null SD for a category of pooled share p0 (labels 0/1): exact for the realised labels
    sd = permutation_sd(w, (np.arange(N_S + N_T) < p0 * (N_S + N_T)).astype(float)[:, None])[0]
    up, _ = min_detectable_ratio(p0, N_S, N_T, sd, alpha, 0.8)
    d = (1.959964 + 0.841621) * sd
    p_S, p_T = p0 + d / 2, p0 - d / 2
    assert up == pytest.approx(p_S / p_T - 1, rel=1e-4)
    hits = 0
    n_sim = 150
    for i in range(n_sim):
        lab = np.r_[rng.random(N_S) < p_S, rng.random(N_T) < p_T].astype(float)[:, None]
        res = cluster_shift(u, v, lab, n_boot=10, n_perm=400, seed=i)
        hits += res["p"][0] <= alpha
    assert abs(hits / n_sim - 0.8) < 0.1


def test_fcr_confidence():
    assert fcr_confidence([0.01, 0.2, 0.5, 0.9], 0.05) == pytest.approx(1 - 0.05 / 4)  # R = 1
    assert fcr_confidence([0.01, 0.02, 0.5, float("nan")], 0.05) == pytest.approx(1 - 2 * 0.05 / 3)
    assert fcr_confidence([0.3, 0.4], 0.05) == pytest.approx(1 - 0.05 / 2)  # R = 0 counts as 1
    assert fcr_confidence([0.01, 0.01], 0.05) == pytest.approx(0.95)
    assert fcr_confidence([], 0.05) == pytest.approx(0.95)
