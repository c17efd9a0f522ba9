"""Latent Scaling on planted Complete Shrinkage / Latent Decoupling cases with known ν."""

import numpy as np
import pytest
from diff_fakes import planted

from lm_diff.config import DiffConfig
from lm_diff.diff import scaling
from lm_diff.diff import table as diff


@pytest.fixture(scope="module")
def result():
    cc, store, _ = planted(n=4000)
    cfg = DiffConfig(stream_batch_size=512)
    table = diff.latent_table(cc, store, 0, (0, 1), cfg)
    return scaling.latent_scaling(cc, store, 0, (0, 1), cfg=cfg, table=table, tokens=4000), table


def row(df, latent, direction, role=None):
    r = df[(df["latent"] == latent) & (df["direction"] == direction)]
    if role:
        r = r[r["role"] == role]
    assert len(r) == 1
    return r.iloc[0]


def test_candidates_and_baseline(result):
    df, _ = result
    assert sorted(df[df.role == "B-candidate"].latent) == [0, 1, 2]
    assert sorted(df[df.role == "A-candidate"].latent) == [3]
    base = df[df.role == "baseline"]  # only one live shared latent (dead 5 excluded), scaled in both directions
    assert sorted(zip(base.latent, base.direction)) == [(4, "A"), (4, "B")]
    assert df.attrs["n_tokens"] == 4000


def test_planted_nus(result):
    df, _ = result
    true_b = row(df, 0, "B")
    assert true_b.nu_eps == pytest.approx(0, abs=1e-6) and true_b.nu_r == pytest.approx(0, abs=1e-6)
    assert true_b.beta_r_B == pytest.approx(1, rel=1e-5) and true_b.beta_eps_B == pytest.approx(1, rel=1e-5)
    assert true_b.specific and true_b.stable
    shrink = row(df, 1, "B")  # Complete Shrinkage: A's error still holds the concept
    assert shrink.nu_eps == pytest.approx(1, rel=1e-5) and shrink.nu_r == pytest.approx(0, abs=1e-6)
    assert not shrink.specific
    dec = row(df, 2, "B")  # Latent Decoupling: A reconstructs the concept through latent 3
    assert dec.nu_r == pytest.approx(1, rel=1e-5) and dec.nu_eps == pytest.approx(0, abs=1e-6)
    assert not dec.specific
    mirror = row(df, 3, "A")  # mirrored: nu = beta_B / beta_A with direction d^A
    assert mirror.nu_r == pytest.approx(1, rel=1e-5) and not mirror.specific
    shared = row(df, 4, "B", "baseline")
    assert shared.nu_r == pytest.approx(1, rel=1e-5) and shared.nu_eps == pytest.approx(1, rel=1e-5)
    assert shared.nu_act == pytest.approx(1, rel=1e-5) and not shared.specific


def test_select_thresholds_and_unstable(result):
    df, _ = result
    loose = scaling.select_specific(df, DiffConfig(nu_eps_max=1.5, nu_r_max=0.5))
    assert set(loose[loose.specific].latent) == {0, 1}
    d = df.copy()
    d.loc[(d.latent == 0) & (d.direction == "B"), "nu_eps"] = -3.0
    out = scaling.select_specific(d, DiffConfig())
    r = out[(out.latent == 0) & (out.direction == "B")].iloc[0]
    assert not r.stable and r.specific  # paper rule keeps it, flagged unstable
    out = scaling.select_specific(d, DiffConfig(drop_unstable=True))
    assert not out[(out.latent == 0) & (out.direction == "B")].iloc[0].specific
    assert out.attrs["thresholds"]["nu_eps_max"] == 0.2


def test_streaming_stats_match_direct_formula():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(5, 2, 4))
    import torch

    st = scaling.ScalingStats(torch.tensor(W, dtype=torch.float32), None, [1, 3], [1, 0])
    x = torch.tensor(rng.normal(size=(50, 2, 4)), dtype=torch.float32)
    f = torch.tensor(np.maximum(rng.normal(size=(50, 5)), 0), dtype=torch.float32)
    xh = torch.tensor(rng.normal(size=(50, 2, 4)), dtype=torch.float32)
    st.update(x[:20], f[:20], xh[:20])
    st.update(x[20:], f[20:], xh[20:])
    b = st.betas()
    d = W[1, 1]
    y = (x[:, 0] - xh[:, 0]).numpy() + f[:, 1:2].numpy() * W[1, 0]
    want = d @ (f[:, 1].numpy()[:, None] * y).sum(0) / (d @ d * (f[:, 1].numpy() ** 2).sum())
    assert b["eps"][0, 0] == pytest.approx(want, rel=1e-4)
