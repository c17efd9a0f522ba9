"""Device smoke check: the capture → train → diff path run on one device, with every result checked to live there.

A tiny random-init Gemma2 pair (``from_config``; B = A with perturbed weights) is captured into an activation store
with ``lm_diff.capture.activations.capture``, a BatchTopK crosscoder is trained on it with ``crosscoder.device`` set,
and the latent table, latent scaling, reconstruction metrics and spliced ΔCE are computed from the trained
checkpoint. The same run on the CPU gives the reference: the script reports each stage's device, wall time and the
CPU-vs-device agreement (EV, Δnorm of the live latents). Needs no lm_eval and no nnsight.

    python benchmarks/gpu_smoke.py               # cuda if present, else says it skipped
    python benchmarks/gpu_smoke.py --device cpu  # the code path on any machine

The last line of output is one JSON object (``ok`` true when every check holds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from helpers import make_tiny_model, make_tokenizer  # noqa: E402

from lm_diff.capture.activations import capture  # noqa: E402
from lm_diff.capture.store import ActivationStore  # noqa: E402
from lm_diff.config import CaptureConfig, CrosscoderConfig  # noqa: E402
from lm_diff.crosscoder.model import CrossCoder  # noqa: E402
from lm_diff.crosscoder.train import train_crosscoder  # noqa: E402
from lm_diff.diff.metrics import reconstruction_metrics, spliced_metrics  # noqa: E402
from lm_diff.diff.scaling import latent_scaling  # noqa: E402
from lm_diff.diff.table import latent_table  # noqa: E402

LAYER = 2
FREQ = "freq"


def _pair(device: str):
    a = make_tiny_model("gemma2", seed=0, layers=4, hidden=128)
    b = make_tiny_model("gemma2", seed=0, layers=4, hidden=128)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in b.parameters():
            p.mul_(1 + 0.05 * torch.randn(p.shape, generator=g))
    return a.to(device), b.to(device)


def _docs(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    words = ("the quick brown fox jumps over a lazy dog while seven numbers and some code def return print flow "
             "through two small models that differ a little").split()
    return [{"text": " ".join(rng.choice(words, 300)), "source": "web", "category": None, "chat": False}
            for _ in range(n)]


def run_on(device: str, work: Path) -> dict:
    t: dict[str, float] = {}
    out: dict = {"device": device}
    tok = make_tokenizer()
    a, b = _pair(device)
    t0 = time.perf_counter()
    ccfg = CaptureConfig(context_length=128, max_tokens=40_000, batch_size=16, shard_tokens=16384, dtype="float16",
                         heldout_fraction=0.1, backend="hooks")
    store_dir = capture([a, b], tok, _docs(200), [LAYER], work / "store", ccfg, progress=False)
    t["capture_s"] = time.perf_counter() - t0
    store = ActivationStore(store_dir)
    cfg = CrosscoderConfig(dict_size=512, k=16, batch_size=1024, steps=300, warmup_steps=50, lr=4e-4,
                           threshold_start_step=100, checkpoint_every=1000, dead_tokens=200_000, seed=0,
                           device=device, shuffle_buffer=8192)
    t0 = time.perf_counter()
    cc_dir = train_crosscoder(store, cfg, work / "cc", models=(0, 1), layer=LAYER, progress=False)
    t["train_s"] = time.perf_counter() - t0
    cc = CrossCoder.load(cc_dir, map_location=device)
    out["crosscoder_param_device"] = str(next(cc.parameters()).device)
    t0 = time.perf_counter()
    table = latent_table(cc, store, LAYER, (0, 1))
    t["latent_table_s"] = time.perf_counter() - t0
    live = table.index[table[FREQ] > 0] if FREQ in table else table.index
    cand_B = table.loc[table["delta_norm"] >= 0.6, "latent"].tolist()[:32]
    cand_A = table.loc[table["delta_norm"] <= 0.4, "latent"].tolist()[:32]
    t0 = time.perf_counter()
    scaling = latent_scaling(cc, store, LAYER, (0, 1), latents_B=cand_B, latents_A=cand_A, table=table)
    t["scaling_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rec = reconstruction_metrics(cc, store, LAYER, (0, 1))
    t["recon_metrics_s"] = time.perf_counter() - t0
    ids = tok(_docs(2)[0]["text"], return_tensors="pt").input_ids[:, :96].to(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        acts = [torch.stack([m(ids, output_hidden_states=True).hidden_states[LAYER + 1] for m in (a, b)], dim=2)]
    spl = spliced_metrics(cc, b, ids, LAYER, 1, acts_BTMD=acts[0])
    t["spliced_s"] = time.perf_counter() - t0
    out.update({
        "seconds": {k: round(v, 2) for k, v in t.items()},
        "n_tokens": int(store.n_tokens),
        "ev": [round(float(x), 4) for x in rec["ev"]],
        "l0": round(float(rec["l0"]), 2),
        "dead_fraction": round(float(rec["dead_fraction"]), 3),
        "delta_ce_B": round(float(spl["delta_ce"]), 4),
        "n_latents": int(len(table)), "n_live": int(len(live)),
        "n_scaled": int(len(scaling)),
        "delta_norm": table["delta_norm"].to_numpy().tolist(),
        "finite": bool(np.isfinite(table["delta_norm"].to_numpy()).all() and np.isfinite(rec["ev"]).all()),
    })
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        res = {"benchmark": "gpu_smoke", "skipped": True, "reason": "no CUDA device"}
        print("skipped: no CUDA device")
        print(json.dumps(res))
        return res
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    work = Path(tempfile.mkdtemp(prefix="gpu_smoke_"))
    try:
        dev = run_on(args.device, work / "dev")
        ref = run_on("cpu", work / "cpu") if args.device != "cpu" else dev
    finally:
        shutil.rmtree(work, ignore_errors=True)
    dn_dev = np.array(dev.pop("delta_norm"))
    dn_ref = np.array(ref.pop("delta_norm")) if ref is not dev else dn_dev
    corr = float(np.corrcoef(np.sort(dn_dev), np.sort(dn_ref))[0, 1]) if dn_ref.std() > 0 else 1.0
    checks = {
        "crosscoder_on_device": dev["crosscoder_param_device"].startswith(args.device.split(":")[0]),
        "finite": dev["finite"],
        "ev_close_to_cpu": all(abs(x - y) < 0.05 for x, y in zip(dev["ev"], ref["ev"])),
        "delta_norm_distribution_close_to_cpu": corr > 0.9,
    }
    res = {"benchmark": "gpu_smoke", "skipped": False, "device": args.device,
           "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
           "torch": torch.__version__, "run": dev, "cpu_reference": ref if args.device != "cpu" else None,
           "delta_norm_sorted_corr": round(corr, 4), "checks": checks, "ok": all(checks.values())}
    for k, v in checks.items():
        print(f"{k:40s} {'ok' if v else 'FAILED'}")
    print(f"stage seconds on {args.device}: {dev['seconds']}")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
