"""link.py: exposure, per-item association, sign agreement, causal fraction and the ablation hook."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from lm_diff.config import StatsConfig
from lm_diff.link.association import (
    ablate_latents_hook,
    association,
    category_activation,
    causal_fraction,
    causal_table,
    exposure,
    sign_agreement,
)
from lm_diff.link.table import link_categories, make_category_table

FAST = StatsConfig(bootstrap=200, permutations=400)


def _joined():
    rows = []
    for t, n in (("t_safety", 6), ("t_code", 4)):
        for i in range(n):
            a = 0.0
            b = 1.0 if (t == "t_safety" and i < 3) else 0.0
            rows.append({"task": t, "doc_id": i, "score_a": a, "score_b": b})
    j = pd.DataFrame(rows)
    j.attrs["task_categories"] = {"t_safety": "safety", "t_code": "code"}
    return j


LC = pd.DataFrame([
    {"latent": 1, "set": "S", "category": "safety"},
    {"latent": 2, "set": "S", "category": "safety"},
    {"latent": 3, "set": "S", "category": "code"},
    {"latent": 9, "set": "T", "category": "safety"},
])


def _acts():
    rows = []
    for i in range(6):
        hi = 2.0 if i < 3 else 0.0
        rows += [{"task": "t_safety", "doc_id": i, "latent": 1, "set": "S", "act": hi},
                 {"task": "t_safety", "doc_id": i, "latent": 2, "set": "S", "act": 0.5}]
    rows.append({"task": "t_code", "doc_id": 0, "latent": 3, "set": "S", "act": 4.0})
    rows.append({"task": "t_safety", "doc_id": 0, "latent": 9, "set": "T", "act": 3.0})
    return pd.DataFrame(rows)


def test_category_activation_and_exposure_hand_computed():
    j = _joined()
    ca = category_activation(_acts(), LC, j)
    s0 = ca[(ca.task == "t_safety") & (ca.doc_id == 0) & (ca["set"] == "S") & (ca.category == "safety")].activation.item()
    assert s0 == pytest.approx(2.5)
    assert ca[(ca.task == "t_code") & (ca.doc_id == 1) & (ca.category == "code")].activation.item() == 0.0
    ex = exposure(_acts(), LC, j)
    row = ex[(ex.category == "safety") & (ex["set"] == "S") & ex.task.isna()].iloc[0]
    assert row.exposure == pytest.approx((3 * 2.5 + 3 * 0.5) / 6) and row.scope == "category_tasks" and row.n_docs == 6
    code_all = ex[(ex.category == "code") & (ex["set"] == "S") & (ex.task == "t_code")].iloc[0]
    assert code_all.exposure == pytest.approx(4.0 / 4)
    t_row = ex[(ex.category == "safety") & (ex["set"] == "T") & ex.task.isna()].iloc[0]
    assert t_row.exposure == pytest.approx(3.0 / 6)


def test_association_finds_planted_link():
    a = association(_acts(), LC, _joined(), stats_cfg=FAST).set_index("category")
    assert a.loc["safety", "r"] == pytest.approx(1.0)
    assert a.loc["safety", "n_flips"] == 3 and a.loc["safety", "n_docs"] == 6
    assert a.loc["safety", "p_value"] < 0.2
    assert pd.isna(a.loc["code", "r"])  # no flips in code: r undefined
    assert "q_value" in a.columns


def test_sign_agreement_cases():
    sig_up = {"share_ratio": 1.5, "ci_low": 0.2, "ci_high": 4.0, "q_value": 0.01}
    gap_up = {"delta": 10.0, "ci_low": 2.0, "ci_high": 18.0}
    gap_down = {"delta": -10.0, "ci_low": -18.0, "ci_high": -2.0}
    assert sign_agreement(sig_up, gap_up) is True
    assert sign_agreement(sig_up, gap_down) is False
    assert sign_agreement({**sig_up, "q_value": 0.3}, gap_up) is None
    assert sign_agreement(sig_up, {"delta": 3.0, "ci_low": -1.0, "ci_high": 7.0}) is None
    assert sign_agreement({**sig_up, "insufficient": True}, gap_up) is None
    assert sign_agreement({"share_ratio": -0.6, "ci_low": -0.9, "ci_high": -0.1}, gap_down) is True  # CI rule without q
    assert sign_agreement(None, gap_up) is None


def test_causal_fraction_modes_and_control():
    r = causal_fraction(0.4, 0.8, 0.7, 0.45)
    assert r["fraction"] == pytest.approx(0.75) and r["random_fraction"] == pytest.approx(0.125)
    assert r["excess"] == pytest.approx(0.625)
    r = causal_fraction(0.4, 0.8, 0.5, 0.78, mode="ablate_b")
    assert r["fraction"] == pytest.approx(0.75) and r["random_fraction"] == pytest.approx(0.05)
    assert causal_fraction(0.5, 0.5, 0.6)["fraction"] is None
    a, b, p = [0, 0, 1, 0] * 10, [1, 1, 1, 0] * 10, [1, 0, 1, 0] * 10
    r = causal_fraction(a, b, p, n_boot=200)
    assert r["fraction"] == pytest.approx(0.5) and r["ci_low"] <= 0.5 <= r["ci_high"] and r["n_docs"] == 40
    with pytest.raises(ValueError):
        causal_fraction(0, 1, 0.5, mode="steer")
    t = causal_table({"safety": {"score_A": 0.4, "score_B": 0.8, "score_patched": 0.5, "mode": "ablate_b", "n_docs": 12},
                      "code": {"fraction": 0.3}})
    assert t["safety"]["fraction"] == pytest.approx(0.75) and t["safety"]["n_docs"] == 12 and t["code"]["fraction"] == 0.3


class _Layer(torch.nn.Module):
    def __init__(self, d, tuple_out):
        super().__init__()
        self.lin = torch.nn.Linear(d, d)
        self.tuple_out = tuple_out

    def forward(self, x):
        y = x + self.lin(x)
        return (y, None) if self.tuple_out else y


class _Inner(torch.nn.Module):
    def __init__(self, d, n, tuple_out):
        super().__init__()
        self.embed = torch.nn.Embedding(50, d)
        self.layers = torch.nn.ModuleList([_Layer(d, tuple_out) for _ in range(n)])


class _LM(torch.nn.Module):
    def __init__(self, d=8, n=3, tuple_out=False, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.model = _Inner(d, n, tuple_out)
        self.captured = None

    def forward(self, input_ids=None, attention_mask=None):
        h = self.model.embed(input_ids)
        for i, layer in enumerate(self.model.layers):
            out = layer(h)
            h = out[0] if isinstance(out, tuple) else out
            if i == 1:
                self.captured = h.detach().clone()
        return h


@pytest.mark.parametrize("tuple_out", [False, True])
def test_ablate_latents_hook_subtracts_decoder_contribution(tuple_out):
    from lm_diff.crosscoder.model import CrossCoder

    d = 8
    A, B = _LM(d, tuple_out=tuple_out, seed=1), _LM(d, tuple_out=tuple_out, seed=2)
    cc = CrossCoder(d, n_models=2, dict_size=16, arch="l1", k=4, normalisation="sqrt_d", seed=0)
    ids = torch.randint(0, 50, (2, 5))
    with torch.no_grad():
        A(ids), B(ids)
        hA, hB = A.captured, B.captured
        cc.fit_normalisation(torch.stack([hA.reshape(-1, d), hB.reshape(-1, d)], 1))
        acts = torch.stack([hA.reshape(-1, d), hB.reshape(-1, d)], 1)
        f = cc.encode(acts)
        lat = [int(i) for i in f.sum(0).topk(3).indices]
        full = cc.decode(f)
        f2 = f.clone()
        f2[:, lat] = 0
        expected = hB.reshape(-1, d) - (full - cc.decode(f2))[:, 1, :]
        with ablate_latents_hook(cc, lat, model_index=1, layer=1, model=B, partner_models={0: A}) as info:
            B(ids)
        got = B.captured.reshape(-1, d)
        assert torch.allclose(got, expected, atol=1e-4)
        assert info["calls"] == 1 and info["mean_removed_norm"] > 0 and info["approximate"] is False
        B(ids)  # hook removed after the context
        assert torch.allclose(B.captured, hB)
        with ablate_latents_hook(cc, lat, model_index=1, layer=1, model=B) as info:
            B(ids)
        assert info["approximate"] is True


def test_linked_q_is_bh_over_the_categories_whose_score_moved():
    """q_linked: BH over the categories with a significant score gap only; agreement uses it, q_value stays BH over all."""
    gap_up = {"delta": 50.0, "ci_low": 40.0, "ci_high": 60.0}
    shifts = [  # name, share ratio, p, q over all categories, score gap
        ("safety", 1.2, 0.01, 0.06, gap_up),
        ("multilingual", 0.9, 0.04, 0.09, gap_up),
        ("math", 2.0, 0.001, 0.011, {"delta": 1.0, "ci_low": -2.0, "ci_high": 4.0}),  # score did not move
        ("code", -0.5, 0.30, 0.40, {"delta": -50.0, "ci_low": -60.0, "ci_high": -40.0}),
    ]
    cats = [{"name": n, "latent_shift": {"share_ratio": sr, "p_value": p, "q_value": q, "insufficient": False}}
            for n, sr, p, q, _ in shifts]
    gaps = [{"name": n, "level": "category", **g} for n, *_, g in shifts]
    by = {c["name"]: c for c in link_categories(cats, gaps, alpha=0.05)}
    # family {safety, multilingual, code}: p (0.01, 0.04, 0.30) -> BH (0.03, 0.06, 0.30)
    assert by["safety"]["latent_shift"]["q_linked"] == pytest.approx(0.03)
    assert by["multilingual"]["latent_shift"]["q_linked"] == pytest.approx(0.06)
    assert by["code"]["latent_shift"]["q_linked"] == pytest.approx(0.30)
    assert "q_linked" not in by["math"]["latent_shift"]
    assert by["safety"]["agreement"] is True  # q_value 0.06 alone would not pass
    assert by["multilingual"]["agreement"] is None and by["code"]["agreement"] is None and by["math"]["agreement"] is None
    assert by["safety"]["latent_shift"]["q_value"] == 0.06


def test_category_table_takes_the_shift_vocabulary():
    """The shift table's ci_low/ci_high/p_value/q_value/method go into latent_shift as they are; pooled rows carry
    their clusters; a category only in the score gaps gets a row without a shift."""
    shift = pd.DataFrame({"category": ["safety"], "share_ratio": [0.5], "count_ratio": [0.2], "ci_low": [0.1],
                          "ci_high": [0.9], "p_value": [0.01], "q_value": [0.02], "n_S": [5], "n_T": [2], "N_S": [10],
                          "N_T": [10], "insufficient": [False], "method": ["pooled_seeds"], "clusters": [4]})
    (row,) = make_category_table(shift)
    ls = row["latent_shift"]
    assert (ls["ci_low"], ls["ci_high"], ls["p_value"], ls["q_value"]) == (0.1, 0.9, 0.01, 0.02)
    assert ls["method"] == "pooled_seeds" and ls["clusters"] == 4
    rows = link_categories([row], [{"name": "code", "level": "category", "delta": 1.0, "ci_low": -1.0, "ci_high": 3.0}])
    assert [r["name"] for r in rows] == ["safety", "code"] and rows[1]["latent_shift"] is None
