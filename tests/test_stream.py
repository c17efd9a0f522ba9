"""capture/stream.py: a stream reads like the store it would have captured, and trains the same crosscoder."""

from __future__ import annotations

import pytest
import torch
from helpers import make_tiny_model, make_tokenizer
from safetensors.torch import load_file

from lm_diff.capture.activations import capture
from lm_diff.capture.store import ActivationStore
from lm_diff.capture.stream import ActivationStream
from lm_diff.config import CaptureConfig, CrosscoderConfig
from lm_diff.crosscoder.train import train_crosscoder
from lm_diff.errors import UserError

WORDS = "one two three four five six seven eight nine ten".split()
DOCS = [{"text": " ".join(WORDS[(i + j) % 10] for j in range(5 + i % 9)), "source": f"src{i % 3}",
         "category": None, "chat": False} for i in range(60)]
CFG = CaptureConfig(context_length=16, max_tokens=100_000, batch_size=8, shard_tokens=64, dtype="float16",
                    heldout_fraction=0.25, backend="hooks")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tok = make_tokenizer()
    models = [make_tiny_model("llama", s, layers=2, hidden=32) for s in (0, 1)]
    store = ActivationStore(capture(models, tok, DOCS, [1], tmp_path_factory.mktemp("store") / "s", CFG,
                                   progress=False))
    return store, ActivationStream(models, tok, DOCS, [1], CFG)


def test_stream_reads_like_the_store(setup):
    store, stream = setup
    assert (stream.n_tokens, stream.n_models, stream.d_model, stream.layers) == (store.n_tokens, 2, 32, [1])
    assert stream.n_shards == len(store.shards) > 3
    for kw in (dict(split="all"), dict(shuffle_buffer=100, seed=3), dict(split="heldout", models=(1, 0))):
        a = list(store.iter_batches(16, with_meta=True, **kw))
        b = list(stream.iter_batches(16, with_meta=True, **kw))
        assert len(a) == len(b) > 0
        for (xa, ma), (xb, mb) in zip(a, b):
            assert torch.equal(xa, xb) and all(torch.equal(ma[k], mb[k]) for k in ma)
    sa, sb = store.stats(), stream.stats()
    assert sa["count"] == sb["count"]
    for k in ("mean_MD", "mean_norm_M", "mean_sq_norm_M"):
        assert torch.equal(sa[k], sb[k]), k
    with pytest.raises(UserError, match="not computed"):
        next(stream.iter_batches(8, layer=0))


def test_a_ranks_rows_at_the_source_are_its_slice_of_every_batch(setup):
    """``iter_batches(rows=(lo, hi))`` (a data-parallel rank's share) of the store and the stream: bitwise rows lo:hi
    of each full batch, in and out of the shuffle buffer."""
    store, stream = setup
    for src, kws, slices in ((store, (dict(shuffle_buffer=100, seed=3), {}), ((0, 8), (8, 16), (4, 12))),
                             (stream, (dict(shuffle_buffer=100, seed=3),), ((8, 16),))):  # each pass recomputes
        for kw in kws:
            full = list(src.iter_batches(16, drop_last=True, **kw))
            for lo, hi in slices:
                part = list(src.iter_batches(16, drop_last=True, rows=(lo, hi), **kw))
                assert len(part) == len(full) > 3
                assert all(torch.equal(p, f[lo:hi]) for p, f in zip(part, full))
    with pytest.raises(UserError, match="rows"):
        next(store.iter_batches(16, rows=(0, 8)))  # a slice of batches needs drop_last


def test_stream_computes_shards_lazily(setup):
    _, stream = setup
    calls = []
    real = stream.shard
    stream.shard = lambda si: calls.append(si) or real(si)
    try:
        next(stream.iter_batches(16, shuffle_buffer=100, seed=1))
    finally:
        del stream.shard
    assert 0 < len(calls) < stream.n_shards  # a bounded buffer: not the whole corpus before the first batch


def test_training_on_stream_equals_training_on_store(setup, tmp_path):
    store, stream = setup
    xc = CrosscoderConfig(dict_size=64, k=4, batch_size=64, steps=25, warmup_steps=3, shuffle_buffer=128,
                          checkpoint_every=1000, dead_tokens=2000, threshold_start_step=5, lr=1e-3)
    assert xc.steps * xc.batch_size > store.meta["token_counts"]["train"]  # more than one epoch
    a = train_crosscoder(store, xc, tmp_path / "disk", models=(0, 1), layer=1, progress=False)
    b = train_crosscoder(stream, xc, tmp_path / "stream", models=(0, 1), layer=1, progress=False)
    ta, tb = load_file(str(a / "crosscoder.safetensors")), load_file(str(b / "crosscoder.safetensors"))
    assert set(ta) == set(tb)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    assert (a / "train_log.jsonl").read_text() == (b / "train_log.jsonl").read_text()


def test_pipeline_streaming_trains_the_disk_stores_crosscoder(tiny_organisms, tmp_path):
    """``capture.streaming: true`` in a run: the store on disk holds only ``stored_tokens`` (the prompts, then the
    corpus), and training reads the stream over all ``max_tokens``: the crosscoder is bitwise the one trained on the
    full disk store (same tokens, same order)."""
    from lm_diff.config import load_config
    from lm_diff.run.pipeline import run_train_stage

    sets = {"capture.max_tokens": 4000, "capture.shard_tokens": 1024, "capture.benchmark_prompts": False,
            "categories.grounding_per_category": 4, "crosscoder.steps": 8, "crosscoder.warmup_steps": 2,
            "crosscoder.batch_size": 256, "crosscoder.dict_size": 64, "crosscoder.exclusive": 0,
            "crosscoder.shuffle_buffer": 2048, "crosscoder.threshold_start_step": 4}
    disk = run_train_stage(load_config("tiny", overrides=sets), tmp_path / "disk")[0]
    cfg = load_config("tiny", overrides={**sets, "capture.streaming": True, "capture.stored_tokens": 2000})
    streamed = run_train_stage(cfg, tmp_path / "stream")[0]
    stores = [ActivationStore(next((tmp_path / o / "stages").glob("capture-*")) / "store") for o in ("disk", "stream")]
    assert stores[0].n_tokens >= 4000 > 2000 >= stores[1].n_tokens > 1500  # the disk store of the streaming run is a prefix
    first = [next(s.iter_batches(512, split="all")) for s in stores]
    assert torch.equal(first[0], first[1])
    ta, tb = load_file(str(disk / "crosscoder.safetensors")), load_file(str(streamed / "crosscoder.safetensors"))
    assert set(ta) == set(tb)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    with pytest.raises(UserError, match="capture.stored_tokens"):
        run_train_stage(load_config("tiny", overrides={**sets, "capture.streaming": True, "capture.stored_tokens": 50}),
                        tmp_path / "small")
