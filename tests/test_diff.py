"""Per-latent table on a hand-built crosscoder and an in-memory store."""

import numpy as np
import pandas as pd
import pytest
from diff_fakes import planted

from lm_diff.config import DiffConfig
from lm_diff.diff import table as diff


def test_delta_orientation_and_tags():
    d = diff.delta_norm([1.0, 0.0, 1.0, 0.2, 1.0], [0.0, 1.0, 1.0, 1.0, 0.8])
    assert np.allclose(d, [0.0, 1.0, 0.5, 0.9, 0.4])  # 1 = B only
    assert np.allclose(diff.delta_from_code(diff.delta_to_code(d)), d)
    assert np.allclose(diff.delta_to_code([1.0]), [0.0])  # code "ft_only" is dec_norm_diff < 0.1
    tags = diff.tag_latents([0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0], DiffConfig())
    assert list(tags) == ["A-only", "A-only", "other", "shared", "other", "B-only", "B-only"]


def test_latent_table_planted(tmp_path):
    cc, store, a = planted(n=2000)
    store.sources = ["web", "chat"]
    store._docs = [{"doc_id": d, "category": "safety" if d < 10 else None} for d in range(40)]
    df = diff.latent_table(cc, store, layer=0, models=(0, 1), cfg=DiffConfig(stream_batch_size=300), out=tmp_path / "t.parquet")
    assert list(df["tag"]) == ["B-only", "B-only", "B-only", "A-only", "shared", "shared"]
    assert np.allclose(df["delta_norm"], [1, 1, 1, 0, 0.5, 0.4])
    assert np.allclose(df["dec_norm_diff_code"], 1 - df["delta_norm"])
    assert df.loc[4, "cos"] == pytest.approx(1.0) and df.loc[5, "r"] == pytest.approx(0.8 / 1.8)
    assert list(df["dead"]) == [False] * 5 + [True]
    # latent 0 fires where a0 > 0, with activation a0
    on = a[:, 0] > 0
    assert df.loc[0, "freq"] == pytest.approx(on.mean())
    assert df.loc[0, "max_act"] == pytest.approx(a[:, 0].max(), rel=1e-5)
    assert df.loc[0, "mean_act"] == pytest.approx(a[:, 0].mean(), rel=1e-5)
    assert df.loc[0, "mean_act_active"] == pytest.approx(a[on, 0].mean(), rel=1e-5)
    web = np.arange(2000) % 2 == 0
    assert df.loc[0, "freq[web]"] == pytest.approx(on[web].mean())
    assert df.loc[0, "max[chat]"] == pytest.approx(a[~web, 0].max(), rel=1e-5)
    safety = np.arange(2000) // 50 < 10
    assert df.loc[1, "freq[cat:safety]"] == pytest.approx((a[safety, 1] > 0).mean())
    tmpl = np.arange(2000) % 4 == 0
    assert df.loc[0, "template_frac"] == pytest.approx((on & tmpl).sum() / on.sum())
    assert df.loc[0, "template_mass"] == pytest.approx(a[tmpl, 0].sum() / a[:, 0].sum(), rel=1e-5)
    assert np.isnan(df.loc[5, "template_frac"])
    back = pd.read_parquet(tmp_path / "t.parquet")
    assert list(back.columns) == list(df.columns) and len(back) == 6
    assert not list(tmp_path.glob(".*tmp"))


def test_decoder_stats_random_crosscoder():
    from lm_diff.crosscoder.model import CrossCoder

    cc = CrossCoder(16, 2, 64, k=4)
    t = diff.decoder_stats(cc)
    # shared init W_dec identical across models: every latent is shared with cos 1
    assert (t["tag"] == "shared").all() and np.allclose(t["cos"], 1.0, atol=1e-5)
    assert {"enc_norm_A", "enc_norm_B", "enc_delta"} <= set(t.columns)


def test_examples_top_quantile_random_and_export(tmp_path):
    from diff_fakes import planted

    from lm_diff.diff import examples as E

    cc, store, a = planted(n=1000)
    ex = E.collect_examples(cc, store, 0, (0, 1), [0, 5], tokenizer=None, cfg=DiffConfig(stream_batch_size=128),
                            n_top=5, n_quantiles=4, per_quantile=2, n_random=3, window=8)
    r = ex[0]
    assert r["max_act"] == pytest.approx(a[:, 0].max(), rel=1e-5) and r["n_active"] == int((a[:, 0] > 0).sum())
    top = [x for x in r["activating"] if x["kind"] == "top"]
    assert len(top) == 5 and top[0]["max_act"] == pytest.approx(a[:, 0].max(), rel=1e-5)
    assert [x["max_act"] for x in r["activating"]] == sorted((x["max_act"] for x in r["activating"]), reverse=True)
    t = top[0]
    # the window holds the token itself, ids and acts match the store
    g = t["doc_id"] * 50 + np.array([p for p in range(t["position"] - 5, t["position"] + 3) if 0 <= p < 50])
    assert t["token_ids"] == store.meta["token_id"][g].tolist()
    assert np.allclose(t["acts"], a[g, 0], atol=1e-5) and t["tokens"] == [str(i) for i in t["token_ids"]]
    # one top example per window per document
    keys = [(x["doc_id"], x["position"]) for x in top]
    assert all(abs(p - q) >= 8 for (d, p) in keys for (e, q) in keys if d == e and p != q)
    assert sorted({x["quantile"] for x in r["activating"] if x["kind"] == "quantile"}) == [1, 2, 3, 4]
    assert len(r["non_activating"]) == 3
    for x in r["non_activating"]:  # centre token silent
        assert a[x["doc_id"] * 50 + x["position"], 0] == 0
    assert ex[5]["activating"] == [] and ex[5]["n_active"] == 0  # dead latent
    path = E.export_delphi_jsonl(ex, tmp_path / "examples.jsonl")
    back = E.load_examples_jsonl(path)
    assert set(back) == {0, 5} and back[0]["activating"][0]["activations"] == back[0]["activating"][0]["acts"]
    assert back[0]["module_name"] == "layer_0"
