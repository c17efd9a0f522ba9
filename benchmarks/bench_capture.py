"""Paired capture throughput vs two full HF forwards of the same models on the same token ids (one run).

Random-init Gemma2, 6 layers, d = 512, FFN 2048, vocab 2048 (the tiny test tokenizer); capture at the middle layer
(3, so layers 0..3 run and 4, 5 and the LM head are skipped). The capture side is the whole ``lm_diff.capture.activations.capture``
call (tokenisation, both forwards, BOS/padding drop, fp16 shards, stats, meta) into a fresh directory; the baseline is
``model(input_ids)`` under ``torch.no_grad()`` for both models on exactly the chunks capture feeds. Medians over
repeats, alternating the variants; both capture backends (nnsight, hooks) are measured. Target: ratio >= 1.5.

Prints one JSON object on its last line. Usage: ``python benchmarks/bench_capture.py [--tokens 8192] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--d", type=int, default=512)
    args = ap.parse_args(argv)

    import torch
    from helpers import make_tokenizer
    from transformers import AutoModelForCausalLM, Gemma2Config

    from lm_diff.capture.activations import capture, plan_chunks, tokenizer_prefix
    from lm_diff.config import CaptureConfig
    from lm_diff.models import resolve_layers

    tok = make_tokenizer()
    cfgm = Gemma2Config(vocab_size=2048, num_hidden_layers=args.layers, hidden_size=args.d, intermediate_size=4 * args.d,
                        num_attention_heads=8, num_key_value_heads=4, head_dim=64, max_position_embeddings=512,
                        sliding_window=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(AutoModelForCausalLM.from_config(cfgm, dtype=torch.float32).eval())
    layer = resolve_layers(["middle"], models[0])
    words = ("the quick brown fox jumps over the lazy dog while numbers 1 2 3 and code def return print "
             "flow through tiny models").split()
    docs = [{"text": " ".join(words[(i * 7 + j) % len(words)] for j in range(400)), "source": "web", "category": None,
             "chat": False} for i in range(max(2, args.tokens // 300))]
    ccfg = dict(context_length=args.context, max_tokens=args.tokens, batch_size=args.batch_size, shard_tokens=65536,
                dtype="float16", heldout_fraction=0.05)
    plan = plan_chunks(docs, tok, args.context, args.tokens, 0.05)
    prefix = tokenizer_prefix(tok)
    n_tokens = sum(len(c[2]) for c in plan["chunks"])
    batches = []
    chunks = plan["chunks"]
    for i in range(0, len(chunks), args.batch_size):
        b = chunks[i:i + args.batch_size]
        T = len(prefix) + max(len(c[2]) for c in b)
        ids = torch.full((len(b), T), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, c in enumerate(b):
            ids[r, :len(prefix) + len(c[2])] = torch.tensor(prefix + c[2].tolist())
            mask[r, :len(prefix) + len(c[2])] = 1
        batches.append({"input_ids": ids} if bool(mask.all()) else {"input_ids": ids, "attention_mask": mask})

    def hf():
        with torch.no_grad():
            for inputs in batches:
                for m in models:
                    m(**inputs, use_cache=False)

    tmp = Path(tempfile.mkdtemp(prefix="bench_capture_"))

    def cap(backend):
        out = tmp / backend
        shutil.rmtree(out, ignore_errors=True)
        capture(models, tok, docs, layer, out, CaptureConfig(**ccfg, backend=backend), progress=False)

    # warm-up (imports nnsight, first-call allocations)
    with torch.no_grad():
        for m in models:
            m(**batches[0], use_cache=False)
    cap("nnsight")
    cap("hooks")
    times = {"hf": [], "nnsight": [], "hooks": []}
    for _ in range(args.repeats):
        for name, fn in (("hf", hf), ("nnsight", lambda: cap("nnsight")), ("hooks", lambda: cap("hooks"))):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "benchmark": "bench_capture",
        "model": f"random-init Gemma2 {args.layers} layers d={args.d} ffn={4 * args.d} vocab=2048",
        "layer": layer,
        "tokens": n_tokens,
        "batch": f"{args.batch_size}x{args.context}",
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "hf_two_forwards_tokens_per_s": round(n_tokens / med["hf"], 1),
        "capture_nnsight_tokens_per_s": round(n_tokens / med["nnsight"], 1),
        "capture_hooks_tokens_per_s": round(n_tokens / med["hooks"], 1),
        "ratio_nnsight": round(med["hf"] / med["nnsight"], 3),
        "ratio_hooks": round(med["hf"] / med["hooks"], 3),
        "ratio": round(med["hf"] / med["nnsight"], 3),  # the default backend
        "ratio_min_nnsight": round(min(times["hf"]) / min(times["nnsight"]), 3),  # best-of-repeats (less contention noise)
        "ratio_min_hooks": round(min(times["hf"]) / min(times["hooks"]), 3),
        "target_ratio": 1.5,
        "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
