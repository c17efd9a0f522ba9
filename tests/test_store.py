"""store.py: reader API, streaming shuffle, splits, model selection, statistics, documents."""

from __future__ import annotations

import pytest
import torch
from helpers import make_tiny_model, make_tokenizer

from lm_diff.capture.activations import capture
from lm_diff.capture.store import ActivationStore, heldout_doc
from lm_diff.config import CaptureConfig
from lm_diff.errors import UserError


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tok = make_tokenizer()
    models = [make_tiny_model("llama", s, layers=2, hidden=32) for s in (0, 1)]
    words = "one two three four five six seven eight nine ten".split()
    docs = [{"text": " ".join(words[(i + j) % 10] for j in range(5 + i % 9)), "source": f"src{i % 3}",
             "category": "cat" if i % 4 == 0 else None, "chat": False} for i in range(60)]
    cfg = CaptureConfig(context_length=16, max_tokens=100_000, batch_size=8, shard_tokens=64, dtype="float16",
                        heldout_fraction=0.25, backend="hooks")
    out = capture(models, tok, docs, [0, 1], tmp_path_factory.mktemp("store") / "s", cfg, progress=False)
    return ActivationStore(out)


def test_meta_and_shape(store):
    assert store.n_models == 2 and store.d_model == 32 and store.layers == [0, 1]
    assert store.sources == ["src0", "src1", "src2"]
    assert sum(s["rows"] for s in store.shards) == store.n_tokens == len(store.token_table())
    assert len(store.shards) > 3 and store.meta["dtype"] == "float16"
    tc = store.meta["token_counts"]
    assert tc["train"] + tc["heldout"] == tc["all"] == store.n_tokens and tc["heldout"] > 0
    assert sum(s["n_tokens"] for s in store.meta["sources"]) == store.n_tokens
    assert "sha256" in store.meta["heldout"]["rule"]


def test_heldout_split_is_by_document(store):
    t = store.token_table()
    for doc_id, g in t.groupby("doc_id"):
        assert g.heldout.nunique() == 1 and bool(g.heldout.iloc[0]) == heldout_doc(int(doc_id), 0.25)
    n_train = sum(b.shape[0] for b in store.iter_batches(50, 1, split="train"))
    n_held = sum(b.shape[0] for b in store.iter_batches(50, 1, split="heldout"))
    assert n_train == int((~t.heldout).sum()) and n_held == int(t.heldout.sum())


def test_iter_batches_order_models_and_meta(store):
    full = store.read_all(1)
    assert full.dtype == torch.float32 and full.shape == (store.n_tokens, 2, 32)
    batches = list(store.iter_batches(37, 1, split="all"))
    assert all(b.shape[0] == 37 for b in batches[:-1]) and torch.equal(torch.cat(batches), full)
    assert sum(1 for _ in store.iter_batches(37, 1, split="all", drop_last=True)) == store.n_tokens // 37
    ident = next(store.iter_batches(10, 1, models=(0, 0), split="all"))
    assert torch.equal(ident[:, 0], ident[:, 1]) and torch.equal(ident[:, 0], full[:10, 0])
    rev = next(store.iter_batches(10, 1, models=(1, 0), split="all"))
    assert torch.equal(rev, full[:10].flip(1))
    acts, meta = next(store.iter_batches(10, 1, split="all", with_meta=True))
    assert set(meta) == {"token_id", "doc_id", "position", "source_id", "template", "heldout"}
    assert meta["token_id"].tolist() == store.token_table().token_id[:10].tolist()
    with pytest.raises(UserError, match="out of range"):
        next(store.iter_batches(10, 1, models=(0, 2)))
    with pytest.raises(UserError, match="was not captured"):
        next(store.iter_batches(10, 5))


def test_shuffle_is_a_deterministic_permutation(store):
    full = store.read_all(0, split="train")
    key = lambda x: x[:, 0, 0] * 1e3 + x[:, 1, 1]  # noqa: E731 - distinct per row in practice
    a = torch.cat(list(store.iter_batches(16, 0, shuffle_buffer=100, seed=3)))
    b = torch.cat(list(store.iter_batches(16, 0, shuffle_buffer=100, seed=3)))
    c = torch.cat(list(store.iter_batches(16, 0, shuffle_buffer=100, seed=4)))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, full)
    assert torch.equal(key(a).sort().values, key(full).sort().values)
    # rows stay paired with their metadata under shuffling
    acts, meta = next(store.iter_batches(16, 0, shuffle_buffer=100, seed=3, with_meta=True, split="all"))
    t = store.token_table()
    allx = store.read_all(0)
    for r in range(4):
        i = t.index[(t.doc_id == int(meta["doc_id"][r])) & (t.position == int(meta["position"][r]))][0]
        assert torch.equal(allx[i], acts[r])


def test_stats_match_data(store):
    s = store.stats(1)
    x = store.read_all(1)
    assert s["count"] == store.n_tokens
    torch.testing.assert_close(s["mean_MD"], x.mean(0), atol=2e-3, rtol=1e-2)  # stats use pre-fp16 values
    torch.testing.assert_close(s["mean_norm_M"], x.norm(dim=-1).mean(0), atol=2e-3, rtol=1e-3)
    assert s["mean_MD"].dtype == torch.float32 and s["mean_sq_norm_M"].shape == (2,)


def test_documents_and_windows(store):
    t = store.token_table()
    row = t.iloc[20]
    w = store.decode_window(int(row.doc_id), int(row.position), radius=2)
    assert w["token_ids"][w["center"]] == row.token_id
    assert w["before"] + w["token"] + w["after"] == store.tokenizer.decode(w["token_ids"])
    d = store.doc(int(row.doc_id))
    assert d["source"] == row.source and store.tokenizer.decode(store.doc_token_ids(int(row.doc_id))) == d["text"]
    assert t.category.notna().any()
