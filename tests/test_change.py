"""Which categories changed (docs/method.md#category-change): the one-sided cluster permutation test of the
model-specific latents (S ∪ T) against the live shared latents."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import hypergeom

from lm_diff.categorize.change import category_change, live_shared
from lm_diff.categorize.shift import pooled_category_shift
from lm_diff.config import StatsConfig
from lm_diff.stats import cluster_shift

TAX = ["math", "structured_output", "hallucination"]


def _labels(counts, N):
    out = []
    for c, n in counts.items():
        out += [c] * n
    return out + ["unassigned"] * (N - len(out))


def test_hand_checkable_single_seed():
    """One seed, singleton clusters: the one-sided permutation p is the hypergeometric upper tail (Fisher one-sided),
    the ratio the share ratio, and a category absent from the specific set gets p = 1."""
    spec = _labels({"math": 6, "structured_output": 2}, 10)
    shared = _labels({"math": 4, "structured_output": 6, "hallucination": 10}, 40)
    cfg = StatsConfig(permutations=20000, min_count=5)
    df = category_change([(spec, shared)], [(np.arange(10), np.arange(10, 50))], TAX, cfg).set_index("category")
    assert df.at["math", "change_ratio"] == pytest.approx((6 / 10) / (4 / 40) - 1)  # +500 %
    assert df.at["math", "n_specific"] == 6 and df.at["math", "n_shared"] == 4
    # P(X >= 6), X = math latents among 10 drawn from 50 of which 10 are math
    assert df.at["math", "change_p"] == pytest.approx(hypergeom(50, 10, 10).sf(5), abs=0.003)
    assert df.at["structured_output", "change_p"] == pytest.approx(hypergeom(50, 8, 10).sf(1), abs=0.01)
    assert df.at["hallucination", "change_p"] == 1.0 and df.at["hallucination", "change_ratio"] == -1.0
    # BH over the three tested categories; unassigned is never tested
    tested = df.loc[TAX, "change_p"].to_numpy()
    order = np.argsort(tested)
    q_expected = np.minimum.accumulate((tested[order] * 3 / np.arange(1, 4))[::-1])[::-1]
    assert df.loc[TAX, "change_q"].to_numpy()[order] == pytest.approx(q_expected)
    assert np.isnan(df.at["unassigned", "change_q"])
    assert not df["change_insufficient"].loc[TAX].any()
    few = category_change([(spec, shared)], [(np.arange(10), np.arange(10, 50))], TAX,
                          StatsConfig(permutations=200, min_count=9)).set_index("category")
    assert bool(few.at["structured_output", "change_insufficient"]) and np.isnan(few.at["structured_output", "change_q"])


def test_one_sided_option_keeps_two_sided_default():
    rng = np.random.default_rng(3)
    lab = (rng.random((60, 2)) < 0.3).astype(float)
    u = np.r_[np.ones(20), np.zeros(40)]
    lab[:20, 0] = 1.0  # category 0 enriched in S
    v = 1 - u
    two = cluster_shift(u, v, lab, n_boot=10, n_perm=4000, seed=1)
    default = cluster_shift(u, v, lab, n_boot=10, n_perm=4000, seed=1, alternative="two-sided")
    greater = cluster_shift(u, v, lab, n_boot=10, n_perm=4000, seed=1, alternative="greater")
    less = cluster_shift(u, v, lab, n_boot=10, n_perm=4000, seed=1, alternative="less")
    assert two["p"] == pytest.approx(default["p"])
    assert greater["p"][0] <= two["p"][0] and less["p"][0] > 0.99
    with pytest.raises(ValueError, match="alternative"):
        cluster_shift(u, v, lab, alternative="bigger")
    # pooled_category_shift passes it on; its default stays two-sided
    S, T = _labels({"math": 9}, 20), _labels({"math": 5}, 40)
    ids = [(np.arange(20), np.arange(20, 60))]
    cfg = StatsConfig(bootstrap=10, permutations=2000)
    p2 = pooled_category_shift([(S, T)], ids, TAX, cfg).set_index("category").at["math", "p"]
    p1 = pooled_category_shift([(S, T)], ids, TAX, cfg, alternative="greater").set_index("category").at["math", "p"]
    assert p1 < p2


def _seeds(rng, K, n_seeds, p_specific, rates_spec, rates_shared, found=0.7):
    """Seeds drawn from K features, each specific (prob p_specific) or shared; a seed finds a feature with prob
    ``found`` and a found feature keeps its cluster id and (first drawn) category."""
    cats = list(rates_spec)
    spec = rng.random(K) < p_specific
    r = np.where(spec[:, None], np.array([rates_spec[c] for c in cats])[None], np.array([rates_shared[c] for c in cats])[None])
    lab = rng.random((K, len(cats))) < r
    first = np.where(lab.any(1), lab.argmax(1), -1)
    name = [cats[f] if f >= 0 else "unassigned" for f in first]
    per_seed, clusters = [], []
    for _ in range(n_seeds):
        got = rng.random(K) < found
        a, b = np.flatnonzero(got & spec), np.flatnonzero(got & ~spec)
        per_seed.append(([name[k] for k in a], [name[k] for k in b]))
        clusters.append((a, b))
    return cats, per_seed, clusters


def test_null_rejects_at_most_the_nominal_rate():
    """Same category rates in the specific and the shared features, three seeds finding 70 % of them: the one-sided
    test rejects each category at about 5 % (features matched across seeds count once), and its one-sided interval
    lies above no change no more often (it is at the FCR level, so less often)."""
    rng = np.random.default_rng(0)
    rates = {"math": 0.15, "structured_output": 0.1, "hallucination": 0.1}
    cfg = StatsConfig(permutations=300, bootstrap=200)
    rej = above = n = 0
    for _ in range(250):  # 750 tests: the binomial SD of the rate at 5 % is 0.8 %
        cats, per_seed, clusters = _seeds(rng, 150, 3, 0.3, rates, rates)
        df = category_change(per_seed, clusters, cats, cfg).set_index("category")
        rej += int((df.loc[cats, "change_p"] < 0.05).sum())
        above += int((df.loc[cats, "change_ci_low"] > 0).sum())
        n += len(cats)
    assert 0.03 <= rej / n <= 0.07
    assert above / n <= 0.07


def test_planted_enrichment_found_and_depleted_category_near_one():
    rng = np.random.default_rng(1)
    cats, per_seed, clusters = _seeds(rng, 400, 3, 0.25, {"math": 0.35, "structured_output": 0.1, "hallucination": 0.02},
                                      {"math": 0.08, "structured_output": 0.1, "hallucination": 0.2})
    df = category_change(per_seed, clusters, cats, StatsConfig(permutations=2000)).set_index("category")
    assert df.at["math", "change_q"] <= 0.01 and df.at["math", "change_ratio"] > 1.0
    # a one-sided interval above no change, below the estimate; the detectable enrichment is smaller than the found one
    assert 0 < df.at["math", "change_ci_low"] < df.at["math", "change_ratio"]
    assert np.isinf(df["change_ci_high"]).all()
    assert 0 < df.at["math", "change_mds"] < df.at["math", "change_ratio"]
    assert df.at["hallucination", "change_ratio"] < -0.5 and df.at["hallucination", "change_p"] > 0.95
    assert df.at["structured_output", "change_q"] > 0.05


def test_live_shared_reads_delta_norm_and_firing():
    table = pd.DataFrame({"latent": [0, 1, 2, 3, 4, 5], "delta_norm": [0.05, 0.5, 0.5, 0.95, 0.1, 0.89],
                          "freq": [0.1, 0.1, 0.0, 0.1, 0.1, 0.2], "dead": [False, False, True, False, False, False]})
    assert live_shared(table) == [1, 5]
    assert live_shared(table.drop(columns="freq")) == [1, 5]
