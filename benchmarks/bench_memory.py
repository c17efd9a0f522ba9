"""Peak RSS of capture + streaming + crosscoder training at N and 10N tokens (each in a fresh subprocess).

Pipeline per child: build a tokenizer and two random-init tiny Gemma2 models (4 layers, d = 128), capture N tokens at
the middle layer into a fresh store, stream one full pass of ``iter_batches`` with the shuffle buffer, then (switch
``INCLUDE_TRAINING`` / ``--no-train``) train a crosscoder with ``lm_diff.crosscoder.train.train_crosscoder`` for a fixed number of
steps. Shard size and shuffle buffer are fixed settings smaller than N, so the ratio shows whether peak memory grows
with corpus size (it should not: shards are committed and freed, the reader holds one shard plus the buffer).
Target: peak_rss(10N) / peak_rss(N) <= 1.2.

Prints one JSON object on its last line. Usage: ``python benchmarks/bench_memory.py [--tokens 20000] [--no-train]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# >>> SWITCH: include crosscoder training (lm_diff.crosscoder.train.train_crosscoder) in the measured pipeline.
INCLUDE_TRAINING = True
# <<<

ROOT = Path(__file__).resolve().parent.parent


def child(tokens: int, out: Path, train: bool, shard_tokens: int, shuffle_buffer: int) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from helpers import make_tiny_model, make_tokenizer

    from lm_diff.capture.activations import capture
    from lm_diff.capture.store import ActivationStore
    from lm_diff.config import CaptureConfig, CrosscoderConfig

    t0 = time.perf_counter()
    tok = make_tokenizer()
    models = [make_tiny_model("gemma2", s, layers=4, hidden=128) for s in (0, 1)]
    words = "the quick brown fox jumps over the lazy dog while numbers 1 2 3 and def return print run".split()
    n_docs = tokens // 150 + 2
    docs = ({"text": " ".join(words[(i * 5 + j) % len(words)] for j in range(200)), "source": ["web", "code"][i % 2],
             "category": None, "chat": False} for i in range(n_docs))
    cfg = CaptureConfig(context_length=128, max_tokens=tokens, batch_size=16, shard_tokens=shard_tokens,
                        dtype="float16", heldout_fraction=0.05)
    store = ActivationStore(capture(models, tok, list(docs), [2], out / "store", cfg, progress=False))
    rss_capture = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n = 0
    for b in store.iter_batches(512, 2, shuffle_buffer=shuffle_buffer, seed=0):
        n += b.shape[0]
    rss_stream = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    trained = False
    if train:
        try:
            from lm_diff.crosscoder.train import train_crosscoder
        except ImportError:
            train = False
        else:
            xcfg = CrosscoderConfig(dict_size=512, k=16, batch_size=512, steps=30, warmup_steps=5, lr=1e-3,
                                    shuffle_buffer=shuffle_buffer, checkpoint_every=15)
            train_crosscoder(store, xcfg, out / "cc", models=(0, 1), layer=2, progress=False)
            trained = True
    del torch
    return {"tokens": store.n_tokens, "streamed": n, "trained": trained,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_after_capture_mb": rss_capture / 1024, "rss_after_stream_mb": rss_stream / 1024,
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=20_000, help="N (the second child captures 10N)")
    ap.add_argument("--no-train", action="store_true", help="measure capture + streaming only")
    ap.add_argument("--shard-tokens", type=int, default=8192)
    ap.add_argument("--shuffle-buffer", type=int, default=16384)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    train = INCLUDE_TRAINING and not args.no_train
    if args.child is not None:
        res = child(args.child, Path(args.out), train, args.shard_tokens, args.shuffle_buffer)
        print(json.dumps(res))
        return res
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    runs = {}
    for label, n in (("N", args.tokens), ("10N", 10 * args.tokens)):
        with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
            cmd = [sys.executable, __file__, "--child", str(n), "--out", tmp, "--shard-tokens", str(args.shard_tokens),
                   "--shuffle-buffer", str(args.shuffle_buffer)] + (["--no-train"] if not train else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr)
                raise SystemExit(f"child for {label} failed")
            runs[label] = json.loads(proc.stdout.strip().splitlines()[-1])
    result = {
        "benchmark": "bench_memory",
        "pipeline": "capture + streaming pass" + (" + train_crosscoder" if runs["N"]["trained"] else ""),
        "include_training": bool(runs["N"]["trained"]),
        "shard_tokens": args.shard_tokens,
        "shuffle_buffer": args.shuffle_buffer,
        "N": runs["N"],
        "10N": runs["10N"],
        "ratio": round(runs["10N"]["peak_rss_mb"] / runs["N"]["peak_rss_mb"], 3),
        "target_ratio": 1.2,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
