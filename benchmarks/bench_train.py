"""Crosscoder training throughput vs raw matmul throughput, measured in the same run.

Shape: 2 models x d=128 (input 256) -> 4096 latents, batch 1024 tokens, BatchTopK k=32, Adam (fp32).
Useful FLOPs per step = the five GEMMs of a dense step: encoder forward, decoder forward, dL/dW_dec, dL/df, dL/dW_enc,
each 2*B*(M*D)*L = 10.7 GFLOP in total. The reference is the same five GEMMs run back to back on their own, so
``ratio`` = matmul time / step time (1.0 = zero overhead from top-k, elementwise ops, Adam and autograd).
Prints one JSON object on its last line (medians over repeats).

    python benchmarks/bench_train.py [--repeats 15] [--steps 5] [--threads N] [--device cpu|cuda] [--bf16]

``--device`` runs the step and the reference GEMMs there (CPU default); ``--bf16`` gives the crosscoder's GEMMs bf16
operands (``CrossCoder.gemm_dtype``, what the trainer does on CUDA) and the reference GEMMs bf16 too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from lm_diff.crosscoder.model import CrossCoder, train_threads  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--steps", type=int, default=5, help="steps per timed repeat")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--dict-size", type=int, default=4096)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 GEMM operands (fp32 accumulation and state)")
    a = ap.parse_args(argv)
    dev = torch.device(a.device)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    if a.threads:
        torch.set_num_threads(a.threads)
    M, D, L, B, k = 2, 128, a.dict_size, 1024, 32
    g = torch.Generator().manual_seed(0)
    # structured inputs so the top-k is not degenerate
    basis = torch.randn(512, M, D, generator=g)
    codes = torch.relu(torch.randn(B * 4, 512, generator=g) - 2.0)
    data = (codes @ basis.reshape(512, -1)).reshape(-1, M, D)
    cc = CrossCoder(D, M, L, "batchtopk", k, init_scale=0.1, normalisation="sqrt_d")
    cc.fit_normalisation(data)
    cc = cc.to(dev)
    cc.gemm_dtype = torch.bfloat16 if a.bf16 else None
    xs = [cc.normalise(data[i * B:(i + 1) * B].to(dev)) for i in range(4)]
    opt = torch.optim.Adam(cc.parameters(), lr=1e-4, fused=True)
    flops = 5 * 2 * B * M * D * L

    def step(i):   # one lm_diff.crosscoder.train step (no dead latents, so no aux loss)
        x = xs[i % 4]
        with train_threads():
            out = cc.train_forward(x, k, keep_pre=False)
            loss = cc.recon_loss(x, out["xhat"], B)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(cc.parameters(), 1.0, foreach=True)
            opt.step()
        return out

    mm_dt = torch.bfloat16 if a.bf16 else torch.float32
    X = xs[0].reshape(B, -1).to(mm_dt)
    We = cc.W_enc_MDL.detach().reshape(-1, L).clone().to(mm_dt)
    Wd = cc.W_dec_LMD.detach().reshape(L, -1).clone().to(mm_dt)
    F = torch.relu(X @ We)
    G = torch.randn(B, M * D, generator=g).to(dev, mm_dt)

    def gemms():
        X @ We          # encoder forward      [B,MD]x[MD,L]
        F @ Wd          # decoder forward      [B,L]x[L,MD]
        F.t() @ G       # dL/dW_dec            [L,B]x[B,MD]
        G @ Wd.t()      # dL/df                [B,MD]x[MD,L]
        X.t() @ F       # dL/dW_enc            [MD,B]x[B,L]

    for _ in range(3):
        step(0)
        gemms()
    t_step, t_mm, fast = [], [], 0
    for r in range(a.repeats):   # interleave to share the machine's noise
        sync()
        t0 = time.perf_counter()
        for i in range(a.steps):
            out = step(i)
            fast += bool(out["topk_candidates"])
        sync()
        t_step.append((time.perf_counter() - t0) / a.steps)
        t0 = time.perf_counter()
        for _ in range(a.steps):
            gemms()
        sync()
        t_mm.append((time.perf_counter() - t0) / a.steps)
    ms, mm = statistics.median(t_step), statistics.median(t_mm)
    res = {
        "shape": {"models": M, "d_model": D, "dict_size": L, "batch": B, "k": k},
        "threads": torch.get_num_threads(),
        "device": str(dev),
        "gemm_dtype": "bf16" if a.bf16 else "fp32",
        "step_ms_median": round(ms * 1e3, 2),
        "matmul_ms_median": round(mm * 1e3, 2),
        "train_gflops": round(flops / ms / 1e9, 1),
        "matmul_gflops": round(flops / mm / 1e9, 1),
        "ratio": round(mm / ms, 3),
        "target": 0.75,
        "tokens_per_s": round(B / ms),
        "fast_topk_fraction": round(fast / (a.repeats * a.steps), 3),   # sampled-bound path (else flat top-k)
    }
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
