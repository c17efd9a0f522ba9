"""Hungarian seed matching, reproducibility, identity control summary, random-init null."""

import numpy as np
import pandas as pd
import pytest
import torch

from lm_diff.config import ControlsConfig
from lm_diff.diff import controls


def test_match_recovers_permutation():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(40, 2, 8))
    perm = rng.permutation(40)
    W2 = W[perm] * rng.uniform(0.5, 2, size=(40, 1, 1)) + 0.01 * rng.normal(size=(40, 2, 8))
    m = controls.match_decoders(torch.tensor(W), torch.tensor(W2))
    inv = np.argsort(perm)
    assert (m["match"].to_numpy() == inv).all()
    assert (m["cos"] > 0.99).all() and (m["best"].to_numpy() == inv).all()


def test_hungarian_vs_greedy():
    # greedy would give b0 to latent 0 (cos .9) and leave latent 1 with b1 (cos .1): total 1.0;
    # Hungarian gives a0 -> b1 (.8) and a1 -> b0 (.85): total 1.65
    a0 = np.array([0.9, np.sqrt(1 - 0.81), 0.0])
    a1 = np.array([0.85, -np.sqrt(1 - 0.85**2), 0.0])
    b0 = np.array([1.0, 0.0, 0.0])
    xy = np.linalg.solve(np.array([a0[:2], a1[:2]]), [0.8, 0.1])
    b1 = np.array([xy[0], xy[1], np.sqrt(1 - xy @ xy)])
    m = controls.match_decoders(np.stack([a0, a1])[:, None, :], np.stack([b0, b1])[:, None, :])
    assert list(m["match"]) == [1, 0] and list(m["best"]) == [0, 0]
    assert m["cos"].tolist() == pytest.approx([0.8, 0.85])


def test_seed_reproducibility():
    rng = np.random.default_rng(1)
    W = rng.normal(size=(20, 2, 6))
    other = W.copy()
    other[:10] = rng.normal(size=(10, 2, 6))  # half the latents are not reproduced
    df = controls.seed_reproducibility([W, W.copy(), other], seeds=[0, 1, 2])
    assert {"match_s1", "cos_s1", "best_cos_s2", "reproducibility", "min_cos"} <= set(df.columns)
    assert np.allclose(df["cos_s1"], 1.0)
    assert (df["reproducibility"][10:] > 0.999).all() and (df["min_cos"][:10] < 0.99).all()
    single = controls.seed_reproducibility([W])
    assert single["reproducibility"].isna().all()


def test_identity_summary():
    table = pd.DataFrame({"latent": range(1000), "tag": ["shared"] * 997 + ["B-only"] * 3, "dead": [False] * 1000})
    scaling = pd.DataFrame({"latent": [997, 998, 999], "direction": ["B"] * 3, "specific": [False, False, True]})
    s = controls.identity_control_summary(table, scaling, ControlsConfig())
    assert s["n_b_only_delta"] == 3 and s["n_b_specific"] == 1 and s["passed"]  # 1 <= 0.005 * 1000
    s = controls.identity_control_summary(table, None, ControlsConfig(identity_max_fraction=0.001))
    assert s["n_exclusive"] == 3 and not s["passed"]


def test_random_init_null():
    from lm_diff.crosscoder.model import CrossCoder

    out = controls.random_init_null(lambda s: CrossCoder(8, 2, 32, k=2, seed=s), seeds=[0, 1])
    assert len(out["table"]) == 64 and out["tag_counts"]["shared"] == 32
    assert out["delta_quantiles"][0.5] == pytest.approx(0.5)
    null = controls.category_permutation_null(np.eye(2)[[0] * 10 + [1] * 10], np.eye(2)[[1] * 20], None)
    assert null["p"][0] < 0.01


def test_seed_clusters_union_find():
    rng = np.random.default_rng(2)
    W = rng.normal(size=(30, 2, 64))  # wide enough that no random latent comes near another (|cos| << 0.7)
    p1, p2 = rng.permutation(30), rng.permutation(30)
    W1, W2 = W[p1].copy(), W[p2].copy()
    W2[np.argsort(p2)[:5]] = rng.normal(size=(5, 2, 64))  # latents 0..4 of seed 0 are not found again in seed 2
    ids0, ids1, ids2 = controls.seed_clusters([W, W1, W2], min_cos=0.7)
    # seed 1 reproduces everything: same cluster as the seed-0 latent it is a permutation of
    assert (ids1 == ids0[p1]).all()
    # seed 2's replacements are singletons; the others share their seed-0 latent's cluster
    fresh = np.argsort(p2)[:5]
    assert len(set(ids2[fresh]) & set(ids0)) == 0 and len(set(ids2[fresh])) == 5
    keep = np.setdiff1d(np.arange(30), fresh)
    assert (ids2[keep] == ids0[p2[keep]]).all()
    assert len(np.unique(np.concatenate([ids0, ids1, ids2]))) == 35
    # a threshold above every matched cosine leaves only singletons
    ids = controls.seed_clusters([W, W1 + 0.5 * rng.normal(size=W1.shape)], min_cos=0.9999)
    assert len(np.unique(np.concatenate(ids))) == 60
