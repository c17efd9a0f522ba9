"""capture.py: identical ids, HF equivalence, BOS/padding handling, template mask, exact resume."""

from __future__ import annotations

import filecmp

import pytest
import torch
from helpers import make_tiny_model, make_tokenizer

from lm_diff.capture.activations import capture, encode_doc, plan_chunks, tokenizer_prefix
from lm_diff.capture.store import ActivationStore
from lm_diff.config import CaptureConfig
from lm_diff.errors import UserError

WORDS = "alpha beta gamma delta the quick brown fox jumps over lazy dog numbers 1 2 3 print def return".split()


def make_docs(n=8):
    docs = []
    for i in range(n):
        k = 3 + (i * 7) % 23  # varied lengths: some padded rows, some split across chunks
        docs.append({"text": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(k)),
                     "source": ["web", "code"][i % 2], "category": None, "chat": False})
    docs.append({"text": "what is 12 * 12?", "source": "chat", "category": "math", "chat": True})
    docs.append({"messages": [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello fox"}],
                 "text": "", "source": "chat", "category": None, "chat": True})
    return docs


def cfg(**kw):
    base = dict(context_length=12, max_tokens=100_000, batch_size=3, shard_tokens=40, dtype="float32",
                heldout_fraction=0.2)
    base.update(kw)
    return CaptureConfig(**base)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def pair():
    return make_tiny_model("gemma2", 0, layers=4), make_tiny_model("gemma2", 1, layers=4)


def _check_against_hf(store, models, tok, docs, layers):
    """Every stored row equals HF hidden_states[l+1] of the unpadded chunk (BOS included in the forward, dropped)."""
    s = ActivationStore(store)
    table = s.token_table()
    prefix = tokenizer_prefix(tok)
    plan = plan_chunks(docs, tok, 12, 100_000, 0.2)
    assert len(table) == sum(len(c[2]) for c in plan["chunks"]) == s.n_tokens
    acts = {layer: s.read_all(layer) for layer in layers}
    row = 0
    with torch.no_grad():
        for doc_id, start, ids, _ in plan["chunks"]:
            ids = ids.tolist()
            x = torch.tensor([prefix + ids])
            n = len(ids)
            assert table.doc_id.iloc[row:row + n].tolist() == [doc_id] * n
            assert table.position.iloc[row:row + n].tolist() == list(range(start, start + n))
            assert table.token_id.iloc[row:row + n].tolist() == ids
            for m_i, model in enumerate(models):
                hs = model(input_ids=x, output_hidden_states=True).hidden_states
                for layer in layers:
                    ref = hs[layer + 1][0, len(prefix):]
                    torch.testing.assert_close(acts[layer][row:row + n, m_i], ref, atol=2e-5, rtol=1e-4)
            row += n


@pytest.mark.parametrize("backend", ["nnsight", "hooks"])
def test_gemma2_matches_hf_hidden_states(tmp_path, tok, pair, backend):
    docs = make_docs()
    pad_side = tok.padding_side
    out = capture(list(pair), tok, docs, [1, 2], tmp_path / "s", cfg(backend=backend), progress=False)
    assert tok.padding_side == pad_side  # nnsight must not mutate the shared tokenizer
    _check_against_hf(out, pair, tok, docs, [1, 2])


def test_llama_matches_hf_and_identical_ids(tmp_path, tok):
    models = [make_tiny_model("llama", 0, layers=3), make_tiny_model("llama", 1, layers=3)]
    seen = [[], []]
    handles = [m.register_forward_pre_hook(lambda _m, a, kw, i=i: seen[i].append(kw["input_ids"].clone()), with_kwargs=True)
               for i, m in enumerate(models)]
    docs = make_docs(8)
    try:
        out = capture(models, tok, docs, [1], tmp_path / "s", cfg(), progress=False)
    finally:
        for h in handles:
            h.remove()
    assert len(seen[0]) == len(seen[1]) > 1
    assert all(torch.equal(a, b) for a, b in zip(*seen))
    _check_against_hf(out, models, tok, docs, [1])


def test_bos_dropped_padding_masked(tmp_path, tok, pair):
    docs = make_docs()
    s = ActivationStore(capture(list(pair), tok, docs, [2], tmp_path / "s", cfg(backend="hooks"), progress=False))
    t = s.token_table()
    assert tok.bos_token_id not in set(t.token_id) and tok.pad_token_id not in set(t.token_id)
    assert s.n_tokens == sum(len(tok(d["text"], add_special_tokens=False)["input_ids"]) for d in docs if not d["chat"]) + \
        sum(s.doc(i)["n_tokens"] for i in (len(docs) - 2, len(docs) - 1))
    assert s.meta["prefix_ids"] == [tok.bos_token_id]
    # per document, positions are 0..n-1 without gaps (chunks continue the count)
    for doc_id, g in t.groupby("doc_id"):
        assert g.position.tolist() == list(range(len(g)))
        assert s.doc_token_ids(doc_id) == g.token_id.tolist()
    assert set(t.source) == {"web", "code", "chat"} and s.sources == ["web", "code", "chat"]


def test_budget_counts_content_tokens(tmp_path, tok, pair):
    s = ActivationStore(capture(list(pair), tok, make_docs(), [1], tmp_path / "s", cfg(max_tokens=50, backend="hooks"),
                                progress=False))
    assert s.n_tokens == 50


def test_template_mask(tok):
    doc = {"messages": [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello fox"}],
           "chat": True, "source": "chat"}
    prefix = tokenizer_prefix(tok)
    ids, template, rendered = encode_doc(doc, tok, prefix)
    assert rendered.startswith("<bos><|user|>") and ids[0] != tok.bos_token_id
    content = tok.decode([i for i, t in zip(ids, template) if not t])
    chrome = tok.decode([i for i, t in zip(ids, template) if t])
    assert content.replace(" ", "") == "hitherehellofox"
    assert "<|user|>" in chrome and "<|assistant|>" in chrome and "hi" not in chrome
    plain, tmask, _ = encode_doc({"text": "hi there", "chat": False}, tok, prefix)
    assert not any(tmask) and plain == tok("hi there", add_special_tokens=False)["input_ids"]
    with pytest.raises(UserError, match="no chat template"):
        encode_doc(doc, make_tokenizer(chat_template=False), prefix)


def _files(d):
    return sorted(p.name for p in d.iterdir() if p.is_file() and p.name != "progress.json")


def _same_store(a, b):
    assert _files(a) == _files(b)
    for name in _files(a):
        assert filecmp.cmp(a / name, b / name, shallow=False), name


@pytest.mark.parametrize("simultaneous", [False, True])
def test_resume_is_exact(tmp_path, tok, monkeypatch, simultaneous):
    docs = make_docs(6)
    pair = [make_tiny_model("llama", s, layers=3, hidden=32) for s in (0, 1)]
    c = cfg(backend="hooks", dtype="float16", shard_tokens=20, simultaneous=simultaneous)
    ref = capture(list(pair), tok, docs, [1, 2], tmp_path / "ref", c, progress=False)
    assert len(ActivationStore(ref).shards) >= 3

    class Boom(Exception):
        pass

    # crash mid-shard (after a batch), right after a shard commit, after a part commit (model by model: model A's
    # pass), and between a shard write and its commit record
    crashes = [("batch", 2), ("shard", 1)] + ([] if simultaneous else [("part", 2), ("batch", 9)])
    for i, when in enumerate(crashes):
        out = tmp_path / f"run{i}"
        n = {"batch": 0, "shard": 0, "part": 0}

        def cb(ev, when=when, n=n):
            n[ev["event"]] += 1
            if (ev["event"], n[ev["event"]]) == when:
                raise Boom

        with pytest.raises(Boom):
            capture(list(pair), tok, docs, [1, 2], out, c, progress=False, callback=cb)
        assert not (out / "meta.json").exists()
        with pytest.raises(UserError, match="interrupted"):
            ActivationStore(out)
        capture(list(pair), tok, docs, [1, 2], out, c, progress=False)
        _same_store(ref, out)
        assert not (out / "parts").exists()

    import lm_diff.io as io

    out = tmp_path / "torn"
    real = io.write_json
    calls = {"n": 0}
    # progress.json writes: 1 = fresh state; simultaneous: 2, 3 = shards 0, 1; model by model: parts of A, then the
    # pass switch, then the shards
    torn = 3 if simultaneous else 4 + len(ActivationStore(ref).shards)

    def flaky(path, obj):
        if str(path).endswith("progress.json"):
            calls["n"] += 1
            if calls["n"] == torn:  # shard 1 is on disk, its commit record is not
                raise Boom
        return real(path, obj)

    monkeypatch.setattr(io, "write_json", flaky)
    import lm_diff.capture.activations as act

    monkeypatch.setattr(act, "write_json", flaky)
    with pytest.raises(Boom):
        capture(list(pair), tok, docs, [1, 2], out, c, progress=False)
    monkeypatch.setattr(io, "write_json", real)
    monkeypatch.setattr(act, "write_json", real)
    assert (out / "shard_00001.safetensors").exists()
    capture(list(pair), tok, docs, [1, 2], out, c, progress=False)
    _same_store(ref, out)


def test_complete_store_is_reused_and_mismatch_refused(tmp_path, tok, pair):
    docs = make_docs(6)
    out = capture(list(pair), tok, docs, [1], tmp_path / "s", cfg(backend="hooks"), progress=False)
    mtime = (out / "meta.json").stat().st_mtime_ns
    capture(list(pair), tok, docs, [1], out, cfg(backend="hooks"), progress=False)
    assert (out / "meta.json").stat().st_mtime_ns == mtime
    with pytest.raises(UserError, match="already holds a complete activation store"):
        capture(list(pair), tok, docs, [2], out, cfg(backend="hooks"), progress=False)


def _store_files(d):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() and p.name != "progress.json")


@pytest.mark.parametrize("kind", ["llama", "gemma2"])
def test_model_by_model_equals_simultaneous_bitwise(tmp_path, tok, kind):
    """One model resident at a time (sources loaded on demand) writes the same bytes as every model at once."""
    import gc
    import weakref

    from lm_diff.capture.forward import model_identity
    from lm_diff.models import ModelSource

    docs = make_docs(8)
    c = cfg(backend="hooks", dtype="float16", shard_tokens=30)
    ref_models = [make_tiny_model(kind, s, layers=3, hidden=64) for s in (0, 1, 2)]
    ids = [model_identity(m) for m in ref_models]
    both = capture(ref_models, tok, docs, [0, 2], tmp_path / "sim", cfg(backend="hooks", dtype="float16",
                   shard_tokens=30, simultaneous=True), progress=False, model_names=["P", "A", "B"])
    del ref_models
    alive: list = []
    loads = []

    def loader(seed):
        def load():
            gc.collect()
            assert all(r() is None for r in alive), "a previous model is still resident"
            m = make_tiny_model(kind, seed, layers=3, hidden=64)
            alive.append(weakref.ref(m))
            loads.append(seed)
            return m
        return load

    sources = [ModelSource(n, loader(s), ids[s]) for n, s in (("P", 0), ("A", 1), ("B", 2))]
    seq = capture(sources, tok, docs, [0, 2], tmp_path / "seq", c, progress=False)
    assert loads == [0, 1, 2]
    assert _store_files(both) == _store_files(seq) and not (seq / "parts").exists()
    for name in _store_files(both):
        assert filecmp.cmp(both / name, seq / name, shallow=False), name
    s = ActivationStore(seq)
    assert s.models == ["P", "A", "B"] and s.n_models == 3 and len(s.shards) > 2


def test_disk_check_fails_before_writing(tmp_path, tok, pair, monkeypatch):
    import collections

    import lm_diff.capture.disk as disk

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 5000, 5000))
    out = tmp_path / "small" / "s"
    docs = make_docs()
    with pytest.raises(UserError) as exc:
        capture(list(pair), tok, docs, [1, 2], out, cfg(backend="hooks"), progress=False)
    msg = str(exc.value)
    n = sum(len(ch[2]) for ch in plan_chunks(docs, tok, 12, 100_000, 0.2)["chunks"])
    need = disk.store_bytes(n, 2, 2, 64, "float32")
    assert "needs about" in msg and "0.00 GB is free" in msg
    assert "capture.max_tokens" in msg and "stream" in msg and "--out" in msg
    assert not out.exists()
    # the estimate is the store's actual size within the side-file margin
    monkeypatch.undo()
    done = capture(list(pair), tok, docs, [1, 2], out, cfg(backend="hooks"), progress=False)
    shards = sum(p.stat().st_size for p in done.glob("shard_*.safetensors"))
    assert need <= shards <= need * 1.2 + 4096 * len(ActivationStore(done).shards)


def test_non_finite_activation_stops_with_one_error(tmp_path, tok):
    models = [make_tiny_model("llama", s, layers=3, hidden=32) for s in (0, 1)]
    with torch.no_grad():
        models[1].model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    out = tmp_path / "s"
    for simultaneous in (False, True):
        with pytest.raises(UserError, match=r"model B .*layer 1, document 0, token 0") as exc:
            capture(models, tok, make_docs(), [0, 1], out, cfg(backend="hooks", simultaneous=simultaneous),
                    progress=False, model_names=["A", "B"])
        assert "non-finite" in str(exc.value)
        assert not (out / "meta.json").exists() and not list(out.glob("shard_*"))
