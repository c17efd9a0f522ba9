"""lm_diff.stats against hand-computed values, scipy, and the hand-written versions scipy replaced."""

import math

import numpy as np
import pytest
from scipy import stats as st

from lm_diff import stats as S


def test_bh_qvalues_hand():
    # m = 4, sorted p: .01 .03 .04 .2 -> raw .04 .06 .0533 .2 -> step-up min: .04 .0533 .0533 .2
    q = S.bh_qvalues([0.01, 0.04, 0.03, 0.2])
    assert np.allclose(q, [0.04, 0.16 / 3, 0.16 / 3, 0.2])
    q = S.bh_qvalues([0.5, np.nan, 0.01])
    assert np.isnan(q[1]) and np.allclose(q[[0, 2]], [0.5, 0.02])
    assert np.isnan(S.bh_qvalues([np.nan, np.nan])).all() and S.bh_qvalues([]).shape == (0,)
    assert S.bh_qvalues(np.array([[0.01, 0.04], [0.03, 0.2]])).shape == (2, 2)


def _bh_hand(p):
    """The hand-written step-up BH that scipy.stats.false_discovery_control replaced."""
    p = np.asarray(p, dtype=float)
    flat, q = p.ravel(), np.full(p.size, np.nan)
    ok = np.isfinite(flat)
    m = int(ok.sum())
    if m:
        pv = flat[ok]
        order = np.argsort(pv, kind="stable")
        ranked = np.minimum.accumulate((pv[order] * m / np.arange(1, m + 1))[::-1])[::-1]
        out = np.empty(m)
        out[order] = np.clip(ranked, 0.0, 1.0)
        q[ok] = out
    return q.reshape(p.shape)


def test_bh_qvalues_equal_the_hand_written_version():
    rng = np.random.default_rng(0)
    for trial in range(300):
        p = rng.random(int(rng.integers(1, 120)))
        if trial % 3 == 0:
            p = np.round(p, 2)  # ties
        if trial % 4 == 0:
            p[rng.random(len(p)) < 0.2] = np.nan
        if trial % 5 == 0:
            p[: len(p) // 3] = 1.0
        np.testing.assert_allclose(S.bh_qvalues(p), _bh_hand(p), rtol=0, atol=1e-12)


def test_ratios_reproduce_seed_numbers():
    assert S.count_ratio(73, 29) == pytest.approx(1.517, abs=5e-4)
    assert S.count_ratio(17, 54) == pytest.approx(-0.685, abs=5e-4)
    assert S.share_ratio(10, 100, 5, 50) == pytest.approx(0.0)
    assert S.share_ratio(20, 92, 10, 113) == pytest.approx((20 / 92) / (10 / 113) - 1)
    assert math.isinf(S.count_ratio(3, 0)) and math.isnan(S.count_ratio(0, 0))


def test_katz_hand():
    # Haldane always: a=10.5, NA=101, b=5.5, NB=51; se = sqrt(1/10.5 - 1/101 + 1/5.5 - 1/51)
    iv = S.katz_share_ratio_ci(10, 100, 5, 50, confidence=0.95)
    lr = math.log((10.5 / 101) / (5.5 / 51))
    se = math.sqrt(1 / 10.5 - 1 / 101 + 1 / 5.5 - 1 / 51)
    assert iv.estimate == pytest.approx(1.0)
    assert iv.lo == pytest.approx(math.exp(lr - 1.959964 * se), rel=1e-5)
    assert iv.hi == pytest.approx(math.exp(lr + 1.959964 * se), rel=1e-5)
    raw = S.katz_share_ratio_ci(10, 100, 5, 50, haldane="never")
    se = math.sqrt(1 / 10 - 1 / 100 + 1 / 5 - 1 / 50)
    assert raw.lo == pytest.approx(math.exp(-1.959964 * se), rel=1e-5)
    z = S.katz_share_ratio_ci(3, 20, 0, 30)
    assert math.isfinite(z.hi) and z.lo > 0


def test_fisher_matches_scipy():
    p = S.fisher_exact(8, 10, 2, 10)
    assert p == pytest.approx(st.fisher_exact([[8, 2], [2, 8]])[1])
    # hand: one-sided P[X >= 3] for 3/3 vs 0/3 with margins 3,3 / total 6 -> 1/C(6,3) = 0.05
    assert S.fisher_exact(3, 3, 0, 3, alternative="greater") == pytest.approx(0.05)


def _mw_hand(pos, neg, alternative="greater", continuity=True):
    """The hand-written vectorised Mann-Whitney (average ranks, tie-corrected normal approximation) that
    scipy.stats.mannwhitneyu(axis=0) replaced."""
    n1, n0, L = len(pos), len(neg), pos.shape[1]
    X = np.concatenate([pos, neg])
    n = n1 + n0
    order = np.argsort(X, axis=0, kind="stable")
    Xs = np.take_along_axis(X, order, axis=0)
    idx = np.broadcast_to(np.arange(n)[:, None], (n, L))
    new = np.ones((n, L), bool)
    new[1:] = Xs[1:] != Xs[:-1]
    end = np.ones((n, L), bool)
    end[:-1] = new[1:]
    start_i = np.maximum.accumulate(np.where(new, idx, 0), axis=0)
    end_i = np.minimum.accumulate(np.where(end, idx, n - 1)[::-1], axis=0)[::-1]
    t = (end_i - start_i + 1).astype(float)
    U = np.where(order < n1, (start_i + end_i) / 2.0 + 1.0, 0.0).sum(0) - n1 * (n1 + 1) / 2.0
    sd = np.sqrt(np.maximum(n1 * n0 / 12.0 * ((n + 1) - (t * t - 1).sum(0) / (n * (n - 1))), 0.0))
    c = 0.5 if continuity else 0.0
    num = {"greater": U - n1 * n0 / 2 - c, "less": n1 * n0 / 2 - U - c, "two-sided": np.abs(U - n1 * n0 / 2) - c}
    with np.errstate(divide="ignore", invalid="ignore"):
        p = st.norm.sf(np.where(sd > 0, num[alternative] / np.where(sd > 0, sd, 1.0), -np.inf))
    p = np.minimum(2 * p, 1.0) if alternative == "two-sided" else p
    return U / (n1 * n0), np.where(sd > 0, p, 1.0)


def test_auroc_hand_and_ties():
    auc, p = S.mannwhitney_auroc_columns(np.array([3, 4, 5.0]), np.array([1, 2, 3.0]))
    # pairs: 3 vs (1,2,3) -> 2.5; 4 -> 3; 5 -> 3 ; total 8.5 / 9
    assert auc[0] == pytest.approx(8.5 / 9)
    assert 0 < p[0] < 0.1
    rng = np.random.default_rng(0)
    pos = np.round(rng.exponential(size=(30, 5)), 1) * (rng.random((30, 5)) < 0.6)
    neg = np.round(rng.exponential(size=(40, 5)), 1) * (rng.random((40, 5)) < 0.4)
    pos[:, 4] = 0
    neg[:, 4] = 0  # constant column
    a, pv = S.mannwhitney_auroc_columns(pos, neg)
    assert a[4] == 0.5 and pv[4] == 1.0
    assert np.isnan(S.mannwhitney_auroc_columns(np.zeros((0, 3)), neg[:, :3])[0]).all()
    with pytest.raises(ValueError, match="alternative"):
        S.mannwhitney_auroc_columns(pos, neg, alternative="bigger")


def test_auroc_columns_equal_the_hand_written_version():
    rng = np.random.default_rng(1)
    for trial in range(60):
        n1, n0, L = (int(v) for v in rng.integers(1, 40, size=3))
        if trial % 2:  # heavy ties, as sparse activations have
            pos, neg = rng.integers(0, 4, (n1, L)).astype(float), rng.integers(0, 4, (n0, L)).astype(float)
        else:
            pos, neg = rng.normal(size=(n1, L)), rng.normal(size=(n0, L))
        for alternative in ("greater", "less", "two-sided"):
            for continuity in (True, False):
                got = S.mannwhitney_auroc_columns(pos, neg, alternative, continuity)
                want = _mw_hand(pos, neg, alternative, continuity)
                np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-12)
                np.testing.assert_allclose(got[1], want[1], rtol=0, atol=1e-12)


def test_bootstraps():
    x = np.arange(10.0)
    iv = S.bootstrap_mean_ci(x, n_boot=4000, seed=1)
    assert iv.estimate == 4.5 and iv.lo < 4.5 < iv.hi
    # SE of the mean ~ std/sqrt(n) = 2.87/3.16 = 0.91 -> CI roughly 4.5 +- 1.8
    assert 2.3 < iv.lo < 3.2 and 5.8 < iv.hi < 6.7
    a = np.random.default_rng(0).normal(size=200)
    b = a + 0.1  # a constant paired shift: the paired CI collapses to the shift
    pv = S.paired_bootstrap_diff(a, b, n_boot=500)
    assert pv.estimate == pytest.approx(0.1) and pv.lo == pytest.approx(0.1) and pv.hi == pytest.approx(0.1)
    with pytest.raises(ValueError):
        S.paired_bootstrap_diff([1, 2], [1])


def test_hierarchical_bootstrap_seeds_then_latents():
    seeds = [(np.ones(20),), (np.zeros(20),)]  # seeds disagree completely
    iv = S.hierarchical_bootstrap(seeds, lambda s: np.mean(np.concatenate([x[0] for x in s])), n_boot=400, seed=0)
    assert iv.estimate == 0.5
    assert iv.lo == 0.0 and iv.hi == 1.0  # resampling seeds reaches both extremes
    one = S.hierarchical_bootstrap([(np.array([0.0, 1.0] * 10),)], lambda s: s[0][0].mean(), n_boot=400)
    assert 0.2 < one.lo < 0.5 < one.hi < 0.8


def test_permutation_null():
    S_ = np.zeros((40, 2))
    T_ = np.zeros((40, 2))
    S_[:30, 0] = 1  # strong shift in category 0
    T_[:5, 0] = 1
    S_[:10, 1] = 1  # no shift in category 1
    T_[:10, 1] = 1
    out = S.permutation_shift_null(S_, T_, n_perm=2000, seed=0)
    assert out["observed"][0] == pytest.approx(0.625) and out["observed"][1] == 0
    assert out["p"][0] < 0.001 and out["p"][1] > 0.9


def test_kappa_hand_values_and_sklearn_convention():
    # 2x2 table [[20, 5], [10, 15]]: po = 0.7, pe = (30*25 + 20*25)/2500 = 0.5 -> kappa 0.4
    a = ["x"] * 25 + ["y"] * 25
    b = ["x"] * 20 + ["y"] * 5 + ["x"] * 10 + ["y"] * 15
    assert S.cohens_kappa(a, b) == pytest.approx(0.4)
    assert S.cohens_kappa(a, a) == pytest.approx(1.0)
    # three labels: po = 4/6; marginals (3,2,1) and (2,2,2): pe = (6+4+2)/36 = 1/3 -> kappa (2/3-1/3)/(2/3) = 0.5
    llm = ["code", "code", "math", "none", "math", "code"]
    grounded = ["code", "math", "math", "none", "none", "code"]
    assert S.cohens_kappa(llm, grounded) == pytest.approx(0.5)
    assert S.cohens_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)  # po = 0, pe = 1/2
    # rater 2 uses one label, rater 1 two: pe = (2/3)(1) = 2/3, po = 2/3 -> 0 (sklearn: 0.0)
    assert S.cohens_kappa(["a", "b", "a"], ["a", "a", "a"]) == pytest.approx(0.0)
    # each rater uses one label, different ones: po = 0, pe = 0 -> 0 (sklearn: 0.0)
    assert S.cohens_kappa(["a", "a"], ["b", "b"]) == 0.0
    # degenerate: both use one and the same label, pe = po = 1, 0/0 -> NaN (sklearn: nan, replace_undefined_by)
    assert math.isnan(S.cohens_kappa(["a", "a", "a"], ["a", "a", "a"]))
    assert math.isnan(S.cohens_kappa([], []))
    with pytest.raises(ValueError, match="same items"):
        S.cohens_kappa(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="not in labels"):
        S.cohens_kappa(["a", "c"], ["a", "a"], labels=["a", "b"])


def test_kappa_matches_sklearn_where_installed():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    for _ in range(50):
        n = int(rng.integers(2, 40))
        a, b = list(rng.choice(["p", "q", "r"], n)), list(rng.choice(["p", "q", "r", "s"], n))
        assert S.cohens_kappa(a, b) == pytest.approx(metrics.cohen_kappa_score(a, b), abs=1e-12)


def test_katz_equals_scipy_relative_risk_for_integer_counts():
    ci = st.contingency.relative_risk(12, 80, 5, 90).confidence_interval(0.9)
    iv = S.katz_share_ratio_ci(12, 80, 5, 90, confidence=0.9, haldane="never")
    assert iv.estimate == pytest.approx((12 / 80) / (5 / 90))
    assert (iv.lo, iv.hi) == (pytest.approx(ci.low, rel=1e-12), pytest.approx(ci.high, rel=1e-12))


def test_point_biserial():
    x = np.array([0, 0, 0, 1, 1, 1.0])
    y = np.array([1, 2, 3, 4, 5, 6.0])
    r, p = S.point_biserial(x, y, n_perm=2000)
    assert r == pytest.approx(np.corrcoef(x, y)[0, 1])
    # exact permutation p: only the 2 of C(6,3)=20 splits as extreme -> 0.1
    assert p == pytest.approx(0.1, abs=0.03)
