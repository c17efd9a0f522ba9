"""GPU smoke benchmark: paired capture and crosscoder training at Gemma-2-2B shapes on one CUDA device.

What it measures (one run, its own time cap, ``--budget-s``, default 200 s):

1. **matmul**: an 8192x8192 bf16 matmul (and the same in fp32, TF32 off): the GPU's measured rate, 2·n³ FLOP per
   product.
2. **capture**: a random-init pair shaped like Gemma-2-2B (Gemma2Config: hidden 2304, 26 layers, FFN 9216, 8 heads,
   4 KV heads, head_dim 256, vocab 256000; built with ``from_config`` on the GPU, cast to bf16; model B = a copy with
   every weight multiplied by (1 + 0.01·N(0,1))). Tokens/s of two plain full forwards (``model(input_ids)``, LM head
   included) vs the capture of layer 13 (the middle) of both models: forward hooks that stop the forward after the
   layer and write the activations into a preallocated [N, 2, D] bf16 tensor on the GPU; ``+host`` also copies each
   batch to pinned host memory as fp16 (what the activation store holds). ``capture_store``: the project's
   ``lm_diff.capture.activations.capture`` (hooks backend, tokenisation, fp16 shards on disk) end to end, if it runs.
3. **crosscoder training**: ``lm_diff.crosscoder`` BatchTopK, 2 models x d 2304 -> 16384 latents, k 64, batch 4096
   tokens, Adam, grad clipping: tokens/s for fp32 GEMMs and for bf16 GEMM operands (``CrossCoder.gemm_dtype``, what
   the trainer uses on CUDA). FLOP convention: the five dense GEMMs of a step (encoder forward, decoder forward,
   dL/dW_dec, dL/df, dL/dW_enc), each 2·B·(M·D)·L, so 10·B·M·D·L per step; top-k selection, elementwise work and Adam
   are not counted. ``*_frac_of_bf16_matmul`` = that rate / the measured bf16 matmul rate (and likewise fp32). The decoder is dense (there is no sparse
   decoder path in lm_diff). Also the host->device copy of one fp16 batch.
4. **trainer**: ``lm_diff.crosscoder.train.train_crosscoder`` itself on the device (``crosscoder.device``, precision
   ``auto``) from an in-memory CPU store at the shape of 3: tokens/s including host->device copies, the non-finite
   guards, logging and the final save (a smoke test of the device path of the real trainer).
5. **peak GPU memory** of each section (``torch.cuda.max_memory_allocated``).

Needs only torch, transformers, safetensors, numpy, rich (+ lm_diff's light deps); never imports lm_eval or nnsight.
Without a CUDA device it prints ``skipped: no CUDA device`` and ``{"skipped": true, ...}`` and exits 0.
``--tiny`` runs every section at toy shapes on whatever device there is (CPU here: exercises the code path).

    python benchmarks/bench_gpu.py            # on the GPU machine (< 4 min)
    python benchmarks/bench_gpu.py --tiny     # smoke test of the code path, any machine

The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from lm_diff.crosscoder.model import CrossCoder  # noqa: E402
from lm_diff.models import decoder_layers, layer_output  # noqa: E402

FULL = {"hidden": 2304, "layers": 26, "ffn": 9216, "heads": 8, "kv_heads": 4, "head_dim": 256, "vocab": 256000,
        "batch": 8, "seq": 1024, "n_mm": 8192, "dict_size": 16384, "k": 64, "xc_batch": 4096, "repeats": 5,
        "xc_steps": 10}
TINY = {"hidden": 64, "layers": 4, "ffn": 128, "heads": 2, "kv_heads": 1, "head_dim": 32, "vocab": 512,
        "batch": 2, "seq": 64, "n_mm": 256, "dict_size": 512, "k": 8, "xc_batch": 256, "repeats": 2, "xc_steps": 3}


class _Stop(Exception):
    """Raised by the capture hook after the last needed layer."""


class _OutOfTime(Exception):
    pass


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(fn: Callable[[], Any], dev: torch.device, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` after one warm-up call."""
    fn()
    _sync(dev)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


def _peak_reset(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def _peak_gib(dev: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(dev) / 2**30, 2) if dev.type == "cuda" else None


# ----------------------------------------------------------------------------------------------------------------------


def bench_matmul(s: dict, dev: torch.device) -> dict:
    n = s["n_mm"]
    res = {"n": n, "flop_convention": "2*n^3 per product"}
    prev_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for name, dt in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            g = torch.Generator(device=dev).manual_seed(0)
            a = torch.randn(n, n, device=dev, dtype=dt, generator=g)
            b = torch.randn(n, n, device=dev, dtype=dt, generator=g)
            reps = 20 if dev.type == "cuda" else 2
            t = _timed(lambda a=a, b=b, reps=reps: [a @ b for _ in range(reps)], dev, 3) / reps
            res[f"{name}_tflops"] = round(2 * n**3 / t / 1e12, 3)
            del a, b
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev_tf32
    return res


def _build_pair(s: dict, dev: torch.device):
    from transformers import AutoModelForCausalLM, Gemma2Config

    cfg = Gemma2Config(vocab_size=s["vocab"], hidden_size=s["hidden"], num_hidden_layers=s["layers"],
                       intermediate_size=s["ffn"], num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
                       head_dim=s["head_dim"], max_position_embeddings=max(8192, s["seq"]), sliding_window=4096,
                       pad_token_id=0, bos_token_id=2, eos_token_id=1)
    torch.manual_seed(0)
    with torch.device(dev):   # random init directly on the device (2.6B parameters on a CPU would take minutes)
        a = AutoModelForCausalLM.from_config(cfg)
    a = a.to(torch.bfloat16).eval()
    b = copy.deepcopy(a)
    g = torch.Generator(device=dev).manual_seed(1)
    with torch.no_grad():
        for p in b.parameters():
            p.mul_(1 + 0.01 * torch.randn(p.shape, device=dev, dtype=p.dtype, generator=g))
    return a, b, cfg


def bench_capture(s: dict, dev: torch.device, deadline: float) -> tuple[dict, torch.Tensor]:
    _peak_reset(dev)
    t0 = time.perf_counter()
    ma, mb = _build_pair(s, dev)[:2]
    build_s = time.perf_counter() - t0
    layer = s["layers"] // 2
    B, T, D = s["batch"], s["seq"], s["hidden"]
    g = torch.Generator(device=dev).manual_seed(2)
    ids = torch.randint(3, s["vocab"], (B, T), device=dev, generator=g)
    n_tok = B * T
    acts = torch.empty(n_tok, 2, D, device=dev, dtype=torch.bfloat16)
    host = torch.empty(n_tok, 2, D, dtype=torch.float16, pin_memory=dev.type == "cuda")

    def full():
        with torch.no_grad():
            for m in (ma, mb):
                m(input_ids=ids, use_cache=False)

    capturing = [False]   # the hooks act only inside cap(): the plain forwards run the whole model

    def make_hook(col: int):
        def hook(_mod, _inp, out):
            if capturing[0]:
                acts[:, col].copy_(layer_output(out).reshape(n_tok, D))
                raise _Stop

        return hook

    handles = [decoder_layers(m)[layer].register_forward_hook(make_hook(i)) for i, m in enumerate((ma, mb))]

    def cap(to_host: bool = False):
        capturing[0] = True
        with torch.no_grad():
            for m in (ma, mb):
                try:
                    m(input_ids=ids, use_cache=False)
                except _Stop:
                    pass
            if to_host:
                host.copy_(acts, non_blocking=True)
        capturing[0] = False

    res: dict[str, Any] = {"model": f"random-init Gemma2 {s['layers']}L d={D} ffn={s['ffn']} vocab={s['vocab']} bf16",
                           "attn_implementation": getattr(ma.config, "_attn_implementation", None),
                           "params_per_model_b": round(sum(p.numel() for p in ma.parameters()) / 1e9, 3),
                           "layer": layer, "batch": f"{B}x{T}", "tokens_per_batch": n_tok, "build_s": round(build_s, 1)}
    try:
        r = s["repeats"]
        t_full = _timed(full, dev, r)
        t_cap = _timed(cap, dev, r)
        t_host = _timed(lambda: cap(True), dev, r)
        res.update(two_full_forwards_tok_s=round(n_tok / t_full), capture_gpu_tok_s=round(n_tok / t_cap),
                   capture_host_tok_s=round(n_tok / t_host), ratio_gpu=round(t_full / t_cap, 3),
                   ratio_host=round(t_full / t_host, 3))
    finally:
        for h in handles:
            h.remove()
    if time.perf_counter() < deadline:
        res["capture_store"] = _capture_store(ma, mb, layer, s, dev)
    res["peak_gib"] = _peak_gib(dev)
    return res, acts[: min(n_tok, s["xc_batch"])].float().clone()


def _capture_store(ma, mb, layer: int, s: dict, dev: torch.device) -> dict:
    """The project's capture() end to end (tokenisation, hooks, fp16 shards); any failure is reported, not raised."""
    tmp = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    try:
        sys.path.insert(0, str(ROOT / "tests"))
        from helpers import make_tokenizer  # noqa: PLC0415 - test helper, only for this optional section

        from lm_diff.capture.activations import capture  # noqa: PLC0415 - optional section: failure is reported
        from lm_diff.config import CaptureConfig  # noqa: PLC0415 - as above

        tok = make_tokenizer()
        words = ("the quick brown fox jumps over the lazy dog while numbers 1 2 3 and code def return print "
                 "flow through models").split()
        n_tok = 4 * s["batch"] * s["seq"]
        docs = [{"text": " ".join(words[(i * 7 + j) % len(words)] for j in range(2000)), "source": "web",
                 "category": None, "chat": False} for i in range(max(2, n_tok // 1500))]
        cfg = CaptureConfig(context_length=s["seq"], max_tokens=n_tok, batch_size=s["batch"], shard_tokens=65536,
                            dtype="float16", heldout_fraction=0.05, backend="hooks")
        capture([ma, mb], tok, docs, [layer], tmp / "warm", dataclasses.replace(cfg, max_tokens=s["seq"] * 2),
                progress=False)
        _sync(dev)
        t0 = time.perf_counter()
        capture([ma, mb], tok, docs, [layer], tmp / "store", cfg, progress=False)
        _sync(dev)
        dt = time.perf_counter() - t0
        meta = json.loads((tmp / "store" / "meta.json").read_text())
        return {"tokens": meta.get("n_tokens"), "tok_s": round(meta.get("n_tokens", 0) / dt), "seconds": round(dt, 2)}
    except Exception as e:  # noqa: BLE001 - an optional section of a benchmark: report and go on
        return {"error": f"{type(e).__name__}: {e}"[:300]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_train(s: dict, dev: torch.device, sample: torch.Tensor | None, mm: dict) -> dict:
    _peak_reset(dev)
    M, D, L, B, k = 2, s["hidden"], s["dict_size"], s["xc_batch"], s["k"]
    g = torch.Generator(device=dev).manual_seed(3)
    basis = torch.randn(1024, M * D, device=dev, generator=g)
    xs = []
    for _ in range(2):   # structured inputs (sparse codes over a basis) so the top-k is not degenerate
        codes = torch.relu(torch.randn(B, 1024, device=dev, generator=g) - 2.0)
        xs.append((codes @ basis).reshape(B, M, D))
    cc = CrossCoder(D, M, L, "batchtopk", k, init_scale=0.1, normalisation="sqrt_d").to(dev)
    cc.fit_normalisation(xs[0])
    xs = [cc.normalise(x) for x in xs]
    flops = 10 * B * M * D * L
    res: dict[str, Any] = {"shape": f"M={M} D={D} L={L} B={B} k={k}", "flop_convention": "10*B*M*D*L per step",
                           "decoder": "dense (no sparse decoder path in lm_diff)"}
    for name, dt in (("fp32", None), ("bf16", torch.bfloat16)):
        cc.gemm_dtype = dt
        opt = torch.optim.Adam(cc.parameters(), lr=1e-4, fused=dev.type in ("cuda", "cpu"))

        calls = [0]

        def step(opt=opt, calls=calls):
            x = xs[calls[0] % 2]   # alternate two batches
            calls[0] += 1
            out = cc.train_forward(x, k, keep_pre=False)
            loss = cc.recon_loss(x, out["xhat"], B)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(cc.parameters(), 1.0, foreach=True)
            opt.step()
            return loss

        n = s["xc_steps"]
        t = _timed(lambda: [step() for _ in range(n)], dev, 3 if dev.type == "cuda" else 1) / n
        res[f"{name}_step_ms"] = round(t * 1e3, 2)
        res[f"{name}_tok_s"] = round(B / t)
        res[f"{name}_tflops"] = round(flops / t / 1e12, 3)
        for ref in ("bf16", "fp32"):
            if mm.get(f"{ref}_tflops"):
                res[f"{name}_frac_of_{ref}_matmul"] = round(flops / t / 1e12 / mm[f"{ref}_tflops"], 3)
        res[f"{name}_loss"] = round(float(step().detach()), 4)
        del opt
    host = (sample if sample is not None else xs[0]).to("cpu", torch.float16)
    host = host.pin_memory() if dev.type == "cuda" else host
    res["h2d_batch_ms"] = round(_timed(lambda: host.to(dev, non_blocking=True), dev, 5) * 1e3, 3)
    res["peak_gib"] = _peak_gib(dev)
    return res


# ----------------------------------------------------------------------------------------------------------------------


def bench_trainer(s: dict, dev: torch.device) -> dict:
    """The real trainer (``train_crosscoder``) on ``dev`` from an in-memory CPU store: data loading, host->device
    copies, the non-finite guards, logging and the final save included (``precision: auto``)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import InMemoryPairSource  # noqa: PLC0415 - test helper, only for this section

    from lm_diff.config import CrosscoderConfig  # noqa: PLC0415 - keeps the module import light
    from lm_diff.crosscoder.train import train_crosscoder  # noqa: PLC0415 - as above

    _peak_reset(dev)
    M, D, L, B, k = 2, s["hidden"], s["dict_size"], s["xc_batch"], s["k"]
    g = torch.Generator(device=dev).manual_seed(4)
    basis = torch.randn(1024, M * D, device=dev, generator=g)
    acts = torch.cat([(torch.relu(torch.randn(B, 1024, device=dev, generator=g) - 2.0) @ basis).reshape(B, M, D).cpu()
                      for _ in range(4)])
    steps = 3 * s["xc_steps"]
    cfg = CrosscoderConfig(dict_size=L, k=k, batch_size=B, steps=steps, warmup_steps=2, lr=1e-4, shuffle_buffer=1,
                           checkpoint_every=10**6, device=str(dev), precision="auto", dead_tokens=10**9)
    tmp = Path(tempfile.mkdtemp(prefix="bench_gpu_train_"))
    try:
        out = train_crosscoder(InMemoryPairSource(acts), cfg, tmp / "cc", progress=False)
        meta = json.loads((out / "crosscoder.json").read_text())["metadata"]
        log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"shape": f"M={M} D={D} L={L} B={B} k={k}", "steps": steps, "train_seconds": meta["train_seconds"],
            "tok_s_incl_save": round(steps * B / meta["train_seconds"]), "final_loss": round(log[-1]["loss"], 4),
            "final_ev": [round(v, 4) for v in log[-1]["ev"]], "peak_gib": _peak_gib(dev)}


def _table(result: dict) -> Table:
    t = Table(title=f"bench_gpu on {result.get('device_name')}")
    t.add_column("section")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for sec in ("matmul", "capture", "train", "trainer"):
        for key, v in (result.get(sec) or {}).items():
            t.add_row(sec, key, json.dumps(v) if isinstance(v, dict) else str(v))
    return t


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="toy shapes on any device (code-path smoke test)")
    ap.add_argument("--budget-s", type=float, default=200.0, help="time cap; sections not started by then are skipped")
    ap.add_argument("--device", default="cuda", help="CUDA device (default cuda)")
    a = ap.parse_args(argv)
    console = Console(stderr=False)
    has_cuda = torch.cuda.is_available()
    if not has_cuda and not a.tiny:
        res = {"benchmark": "bench_gpu", "skipped": True, "reason": "no CUDA device"}
        console.print("skipped: no CUDA device")
        print(json.dumps(res))
        return res
    dev = torch.device(a.device if has_cuda else "cpu")
    s = TINY if a.tiny else FULL
    t_start = time.perf_counter()
    deadline = t_start + a.budget_s
    result: dict[str, Any] = {
        "benchmark": "bench_gpu", "skipped": False, "tiny": a.tiny, "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__, "budget_s": a.budget_s, "errors": {}}

    def on_alarm(*_):
        raise _OutOfTime(f"time cap {a.budget_s + 30:.0f} s reached")

    if hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(int(a.budget_s + 30))   # hard cap: the soft deadline is checked between sections
    sample = None
    try:
        for name in ("matmul", "capture", "train", "trainer"):
            if time.perf_counter() > deadline:
                result["errors"][name] = "skipped: over the time budget"
                continue
            try:
                if name == "matmul":
                    result["matmul"] = bench_matmul(s, dev)
                elif name == "capture":
                    result["capture"], sample = bench_capture(s, dev, deadline)
                elif name == "train":
                    result["train"] = bench_train(s, dev, sample, result.get("matmul") or {})
                else:
                    result["trainer"] = bench_trainer(s, dev)
            except _OutOfTime:
                raise
            except Exception as e:  # noqa: BLE001 - keep the other sections' numbers; the error is reported
                result["errors"][name] = f"{type(e).__name__}: {e}"[:500]
                traceback.print_exc()
            finally:
                gc.collect()   # the model pair of the capture section holds GPU memory until collected
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
    except _OutOfTime as e:
        result["errors"]["time"] = str(e)
    finally:
        if hasattr(signal, "SIGALRM"):
            signal.alarm(0)
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    console.print(_table(result))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
