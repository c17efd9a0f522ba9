"""Grounded enrichment (AUROC + BH-corrected Mann-Whitney), prompt max activations, grounding plugin."""

import json
import time

import numpy as np
import pytest
from diff_fakes import planted
from scipy import stats as st

from lm_diff.categorize import grounding as C
from lm_diff.errors import UserError

TAX = ["safety", "code", "math"]


def _synthetic(P_per=60, L=50, seed=0):
    rng = np.random.default_rng(seed)
    cats = ["neutral"] * P_per + ["safety"] * P_per + ["code"] * P_per
    X = np.maximum(rng.normal(size=(len(cats), L)) - 1.0, 0)
    X[P_per:2 * P_per, 0] += 2.0  # latent 0 <- safety
    X[2 * P_per:, 1] += 2.0  # latent 1 <- code
    X[P_per:2 * P_per, 2] += 2.0  # latent 2 <- safety and code (multi-label)
    X[2 * P_per:, 2] += 2.0
    return X, cats


def test_grounded_assign_recovers_planted():
    X, cats = _synthetic()
    df = C.grounded_assign(X, cats, TAX, auroc_min=0.75, q=0.05)
    assert set(df["category"]) == {"safety", "code"}  # math has no prompts: skipped
    assert len(df) == 2 * X.shape[1]
    got = df[df.assigned]
    assert set(zip(got.latent, got.category)) == {(0, "safety"), (1, "code"), (2, "safety"), (2, "code")}
    r = df[(df.latent == 0) & (df.category == "safety")].iloc[0]
    ref = st.mannwhitneyu(X[60:120, 0], X[:60, 0], alternative="greater", method="asymptotic")
    assert r.auroc == pytest.approx(ref.statistic / 3600) and r.p == pytest.approx(ref.pvalue)
    # q = BH over all 100 latent x category pairs
    from lm_diff.stats import bh_qvalues

    assert np.allclose(df["q"], bh_qvalues(df["p"]))
    labels = C.latent_labels(df, latents=[0, 2, 3])
    assert labels[0] == ["safety"] and sorted(labels[2]) == ["code", "safety"] and labels[3] == ["unassigned"]


def test_specificity_drops_latents_that_fire_on_every_category():
    X, cats = _synthetic()
    X[60:, 3] += 2.0  # latent 3 fires on every labelled prompt (like a chat-template latent), not on neutral
    off = C.grounded_assign(X, cats, TAX)
    on = C.grounded_assign(X, cats, TAX, specificity_min=0.6)
    got_off = set(zip(off[off.assigned].latent, off[off.assigned].category))
    got_on = set(zip(on[on.assigned].latent, on[on.assigned].category))
    assert {(3, "safety"), (3, "code")} <= got_off  # enriched vs neutral in both categories...
    assert not {(3, "safety"), (3, "code")} & got_on  # ...but specific to neither
    # single-category latents pass; latent 2 (safety and code, vs a rest made only of the other one) does not
    assert {(0, "safety"), (1, "code")} <= got_on and (2, "safety") not in got_on
    r = on[(on.latent == 0) & (on.category == "safety")].iloc[0]
    ref = st.mannwhitneyu(X[60:120, 0], X[120:, 0], alternative="greater", method="asymptotic")
    assert r.auroc_rest == pytest.approx(ref.statistic / 3600)
    assert on.attrs["specificity_min"] == 0.6


def test_errors_and_multilabel_prompts():
    X, cats = _synthetic(P_per=10, L=3)
    with pytest.raises(UserError, match="not in the taxonomy"):
        C.grounded_assign(X, [c if c != "code" else "cooking" for c in cats], TAX)
    with pytest.raises(UserError, match="no 'neutral'"):
        C.grounded_assign(X[10:], cats[10:], TAX)
    multi = [c if c != "code" else ["code", "math"] for c in cats]
    df = C.grounded_assign(X, multi, TAX)
    assert set(df.category) == {"safety", "code", "math"}


def test_vectorised_speed():
    rng = np.random.default_rng(0)
    L, P = 8000, 600
    X = np.maximum(rng.normal(size=(P, L)).astype(np.float32) - 2.0, 0)
    cats = ["neutral"] * 300 + ["safety"] * 150 + ["code"] * 150
    t = time.time()
    df = C.grounded_assign(X, cats, TAX)
    assert len(df) == 2 * L
    assert time.time() - t < 20  # a few seconds on one free core


def test_store_prompt_max_acts():
    cc, store, a = planted(n=200)
    ids, M = C.store_prompt_max_acts(cc, store, 0, (0, 1), batch_size=64)
    assert list(ids) == [0, 1, 2, 3]  # doc_id = token // 50
    assert M[1, 0] == pytest.approx(a[50:100, 0].max(), rel=1e-5)
    ids, M = C.store_prompt_max_acts(cc, store, 0, (0, 1), doc_ids=[3, 1], latents=[0], batch_size=64)
    assert list(ids) == [3, 1] and M[0, 0] == pytest.approx(a[150:200, 0].max(), rel=1e-5)


def test_grounding_plugin(tmp_path):
    from lm_diff.categorize.prompts import lm_diff_grounding_prompts
    from lm_diff.categorize.taxonomy import Category
    from lm_diff.config import from_dict

    tax = [Category("safety", "s"), Category("code", "c")]
    p = tmp_path / "g.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [{"text": "hi", "category": "neutral"}, {"text": "rm -rf", "category": "safety"}]) + "\n")
    cfg = from_dict({"categories": {"grounding": str(p)}})
    out = lm_diff_grounding_prompts(cfg, tax)
    assert [r["category"] for r in out] == ["neutral", "safety"]
    p.write_text(json.dumps({"text": "x", "category": "saftey"}) + "\n")
    with pytest.raises(UserError, match="did you mean 'safety'"):
        lm_diff_grounding_prompts(cfg, tax)
    p.write_text("{not json\n")
    with pytest.raises(UserError, match="g.jsonl:1"):
        lm_diff_grounding_prompts(cfg, tax)
    builtin = lm_diff_grounding_prompts(from_dict({}), tax)  # built-in set, filtered to the taxonomy
    assert {r["category"] for r in builtin} == {"neutral", "safety", "code"}
