"""Category shift table: seed numbers, Katz CI, Fisher/BH, soft labels, masses, bootstrap, permutation."""

import json

import numpy as np
import pytest

from lm_diff.categorize.shift import category_shift, label_matrix
from lm_diff.config import StatsConfig
from lm_diff.errors import UserError
from lm_diff.stats import fisher_exact, katz_share_ratio_ci

TAX = ["instruction_following", "safety", "hallucination"]


def _labels(counts, N):
    out = []
    for c, n in counts.items():
        out += [c] * n
    return out + ["unassigned"] * (N - len(out))


def test_seed_numbers_count_and_share():
    S = _labels({"instruction_following": 73, "safety": 23, "hallucination": 17}, 150)
    T = _labels({"instruction_following": 29, "safety": 16, "hallucination": 54}, 120)
    df = category_shift(S, T, TAX, StatsConfig(bootstrap=200)).set_index("category")
    assert df.loc["instruction_following", "count_ratio"] == pytest.approx(1.517, abs=5e-4)  # +151.7%
    assert round(100 * df.loc["safety", "count_ratio"], 1) == 43.8  # +43.8% (23/16 = 1.4375)
    assert df.loc["hallucination", "count_ratio"] == pytest.approx(-0.685, abs=5e-4)  # -68.5%
    r = df.loc["instruction_following"]
    assert (r.n_S, r.n_T, r.N_S, r.N_T) == (73, 29, 150, 120)
    assert r.share_ratio == pytest.approx((73 / 150) / (29 / 120) - 1)
    # intervals at the FCR level 1 - R*0.05/m: instruction following and hallucination are discoveries (R = 2, m = 3)
    assert (df["fisher_q"].dropna() <= 0.05).sum() == 2 and r.ci_level == pytest.approx(1 - 2 * 0.05 / 3)
    iv = katz_share_ratio_ci(73, 150, 29, 120, confidence=1 - 2 * 0.05 / 3)
    assert r.share_ratio_lo == pytest.approx(iv.lo - 1) and r.share_ratio_hi == pytest.approx(iv.hi - 1)
    plain = category_shift(S, T, TAX, StatsConfig(bootstrap=200, fcr_intervals=False)).set_index("category")
    iv = katz_share_ratio_ci(73, 150, 29, 120)
    assert plain.loc["instruction_following", "share_ratio_lo"] == pytest.approx(iv.lo - 1)
    assert plain.loc["instruction_following", "ci_level"] == 0.95
    assert r.fisher_p == pytest.approx(fisher_exact(73, 150, 29, 120))
    assert df.loc["unassigned", "n_S"] == 150 - 113 and np.isnan(df.loc["unassigned", "fisher_q"])
    assert not df["insufficient"].any()


def test_insufficient_soft_and_multilabel():
    S = [["safety", "hallucination"], {"safety": 0.5}, "unassigned", "safety"]
    T = ["hallucination", "none", []]
    m = label_matrix(S, TAX)
    assert m.tolist() == [[0, 1, 1], [0, 0.5, 0], [0, 0, 0], [0, 1, 0]]
    df = category_shift(S, T, TAX, StatsConfig(min_count=5)).set_index("category")
    assert df.loc["safety", "n_S"] == pytest.approx(2.5) and df.loc["safety", "N_S"] == 4
    assert df["insufficient"].all()
    with pytest.raises(UserError, match="not in the taxonomy"):
        category_shift(["cooking"], ["safety"], TAX)


def test_masses_bootstrap_and_permutation():
    rng = np.random.default_rng(0)
    S = list(rng.choice(TAX, size=60, p=[0.7, 0.2, 0.1]))
    T = list(rng.choice(TAX, size=60, p=[0.2, 0.4, 0.4]))
    mS = np.ones(60)
    mS[[i for i, c in enumerate(S) if c == "safety"]] = 3.0
    per_seed = [(S, T), (S[:40], T[:50]), (S[20:], T[10:])]
    df = category_shift(S, T, TAX, StatsConfig(bootstrap=300, permutations=500), mass_S=mS, mass_T=np.ones(60),
                        per_seed=per_seed, permutation=True).set_index("category")
    n_saf = S.count("safety")
    assert df.loc["safety", "mass_share_S"] == pytest.approx(3 * n_saf / (60 - n_saf + 3 * n_saf))
    assert df.loc["safety", "mass_share_S_lo"] <= df.loc["safety", "mass_share_S"] <= df.loc["safety", "mass_share_S_hi"]
    assert df.loc["hallucination", "mass_share_T"] == pytest.approx(T.count("hallucination") / 60)
    r = df.loc["instruction_following"]
    assert r.boot_share_ratio_lo < r.share_ratio < r.boot_share_ratio_hi and r.boot_share_ratio_lo > 0
    assert r.perm_p < 0.01 and r.fisher_q < 0.01


def _cluster_data(rng, K, n_seeds, p_S, rates_S, rates_T, found=1.0):
    """Seeds of S/T label sets drawn from K underlying features; each seed finds each feature with prob ``found``."""
    cats = list(rates_S)
    is_S = rng.random(K) < p_S
    lab = np.where(is_S[:, None], rng.random((K, 1)) < np.array([rates_S[c] for c in cats])[None],
                   rng.random((K, 1)) < np.array([rates_T[c] for c in cats])[None])
    first = np.where(lab.any(1), lab.argmax(1), -1)
    per_seed, clusters = [], []
    for _ in range(n_seeds):
        got = rng.random(K) < found
        s_k = np.flatnonzero(got & is_S)
        t_k = np.flatnonzero(got & ~is_S)
        name = lambda k: cats[first[k]] if first[k] >= 0 else "unassigned"  # noqa: E731
        per_seed.append(([name(k) for k in s_k], [name(k) for k in t_k]))
        clusters.append((s_k, t_k))
    return cats, per_seed, clusters


def test_pooled_matches_single_seed_with_singletons():
    from lm_diff.categorize.shift import pooled_category_shift

    S = _labels({"safety": 12, "instruction_following": 3}, 40)
    T = _labels({"safety": 4, "hallucination": 6}, 50)
    cfg = StatsConfig(bootstrap=500, permutations=2000)
    pooled = pooled_category_shift([(S, T)], [(np.arange(40), np.arange(40, 90))], TAX, cfg).set_index("category")
    single = category_shift(S, T, TAX, cfg, permutation=True).set_index("category")
    for col in ("n_S", "n_T", "N_S", "N_T", "share_ratio", "count_ratio"):
        assert pooled[col].to_numpy() == pytest.approx(single[col].to_numpy(), nan_ok=True)
    assert pooled.at["safety", "share_ratio"] == pytest.approx((12 / 40) / (4 / 50) - 1)
    # the cluster permutation test with singleton clusters is the latent-level permutation test
    assert pooled.at["safety", "p"] == pytest.approx(single.at["safety", "perm_p"], abs=0.02)
    assert pooled.at["safety", "share_ratio_lo"] > 0 and pooled.at["safety", "p"] < 0.05
    assert bool(pooled.at["hallucination", "insufficient"]) is False and bool(pooled.at["instruction_following", "insufficient"]) is True
    # the table's attributes are written into parquet as JSON (masses used to leave an array in them)
    with_mass = pooled_category_shift([(S, T)], [(np.arange(40), np.arange(40, 90))], TAX, cfg,
                                      masses=[(np.ones(40), np.ones(50))])
    # two categories are tested (instruction following is insufficient): the detectable shift is at alpha / 2
    assert json.loads(json.dumps(with_mass.attrs))["mds_alpha"] == pytest.approx(0.05 / 2)
    assert np.isnan(pooled.at["instruction_following", "q"]) and not np.isnan(pooled.at["safety", "q"])


def test_pooled_identical_seeds_add_no_evidence():
    """Three seeds that find the same latents: counts triple, but the p-value and CI are those of one seed."""
    from lm_diff.categorize.shift import pooled_category_shift

    S = _labels({"safety": 9, "hallucination": 2}, 40)
    T = _labels({"safety": 5, "hallucination": 6}, 50)
    ids = (np.arange(40), np.arange(40, 90))
    cfg = StatsConfig(bootstrap=400, permutations=1000)
    one = pooled_category_shift([(S, T)], [ids], TAX, cfg).set_index("category")
    three = pooled_category_shift([(S, T)] * 3, [ids] * 3, TAX, cfg).set_index("category")
    assert three.at["safety", "n_S"] == 27 and three.at["safety", "N_T"] == 150
    for col in ("share_ratio", "share_ratio_lo", "share_ratio_hi", "p", "q"):
        assert three[col].to_numpy() == pytest.approx(one[col].to_numpy(), nan_ok=True)
    # treating the 3 x 40 latents as independent (Fisher on pooled counts) would overstate the evidence
    assert fisher_exact(27, 120, 15, 150) < one.at["safety", "p"] / 2


def test_pooled_cluster_test_is_calibrated_under_the_null():
    """No shift, three seeds that each find 70 % of the same features: the cluster test rejects at about the nominal
    rate, the latent-level Fisher test on pooled counts far more often."""
    from lm_diff.categorize.shift import pooled_category_shift

    rng = np.random.default_rng(0)
    rates = {"safety": 0.15, "instruction_following": 0.1, "hallucination": 0.1}
    cfg = StatsConfig(bootstrap=10, permutations=400)
    rej_cluster = rej_fisher = n = 0
    for _ in range(150):
        cats, per_seed, clusters = _cluster_data(rng, 120, 3, 0.45, rates, rates, found=0.7)
        df = pooled_category_shift(per_seed, clusters, cats, cfg).set_index("category")
        rej_cluster += int(df.at["safety", "p"] < 0.05)
        a, b = df.at["safety", "n_S"], df.at["safety", "n_T"]
        rej_fisher += int(fisher_exact(a, df.at["safety", "N_S"], b, df.at["safety", "N_T"]) < 0.05)
        n += 1
    assert rej_cluster / n <= 0.09
    assert rej_fisher / n >= 2 * max(rej_cluster / n, 0.03)


def test_pooled_cluster_test_finds_a_planted_shift():
    from lm_diff.categorize.shift import pooled_category_shift

    rng = np.random.default_rng(1)
    cfg = StatsConfig(bootstrap=300, permutations=1000)
    cats, per_seed, clusters = _cluster_data(rng, 150, 3, 0.45, {"safety": 0.3, "hallucination": 0.1},
                                             {"safety": 0.08, "hallucination": 0.1}, found=0.7)
    df = pooled_category_shift(per_seed, clusters, cats, cfg).set_index("category")
    assert df.at["safety", "q"] < 0.05 and df.at["safety", "share_ratio_lo"] > 0
    assert df.at["safety", "clusters_c"] < df.at["safety", "n_S"] + df.at["safety", "n_T"]
