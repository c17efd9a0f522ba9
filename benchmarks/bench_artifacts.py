"""L1 vs BatchTopK sparsity artifacts (docs/method.md#sparsity-artifacts): on the same paired activations of an organism pair, train an
L1 and a BatchTopK crosscoder with the same budget, and count the latents that look model-exclusive by Δnorm alone
and those left after latent scaling (ν^ε < 0.2 ∧ ν^r < 0.5). Minder et al. predict that L1 yields more Δ-only
"exclusive" latents (Complete Shrinkage, Latent Decoupling) and that latent scaling removes most of them.

    python benchmarks/bench_artifacts.py [--size tiny|demo] [--steps 600] [--l1 1.0] [--layer middle]

Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="tiny", choices=["tiny", "demo"])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--l1", type=float, default=1.0, help="L1 coefficient")
    ap.add_argument("--layer", default="middle")
    ap.add_argument("--out", default=None, help="work directory (default: a temporary one)")
    a = ap.parse_args(argv)

    from lm_diff.capture.activations import capture
    from lm_diff.capture.store import ActivationStore
    from lm_diff.config import load_config
    from lm_diff.crosscoder.model import CrossCoder
    from lm_diff.crosscoder.train import train_crosscoder
    from lm_diff.diff.scaling import latent_scaling
    from lm_diff.diff.table import latent_table
    from lm_diff.models import load_models, model_pair, resolve_layers
    from lm_diff.run.pipeline import capture_docs

    layer_cfg = [int(a.layer)] if a.layer.isdigit() else [a.layer]
    cfg = load_config(a.size if a.size == "tiny" else "demo", overrides={"layers": layer_cfg})
    work = Path(a.out or tempfile.mkdtemp(prefix="lm_diff_artifacts_"))
    pair = model_pair(cfg)
    models, tok = load_models(cfg, pair)
    layer = resolve_layers(cfg.layers, models[0])[0]
    docs, _ = capture_docs(cfg, tok)
    store = ActivationStore(capture(models, tok, docs, [layer], work / "store", cfg.capture, progress=False))
    out: dict = {"size": a.size, "layer": layer, "tokens": store.n_tokens, "steps": a.steps}
    for arch in ("batchtopk", "l1"):
        # Standard crosscoders (every latent has a free decoder per model): the artifacts are theirs. Dedicated
        # latents (crosscoder.exclusive, on in the shipped configs) have Δnorm 0 or 1 by construction, which would
        # make every dedicated latent "Δ-only exclusive" whatever the sparsity penalty.
        xc = dataclasses.replace(cfg.crosscoder, architecture=arch, steps=a.steps, l1_coefficient=a.l1, exclusive=0)
        t0 = time.perf_counter()
        d = train_crosscoder(store, xc, work / arch, layer=layer, progress=False)
        cc = CrossCoder.load(d)
        table = latent_table(cc, store, layer, (0, 1), cfg.diff)
        scaling = latent_scaling(cc, store, layer, (0, 1), cfg=cfg.diff, table=table, tokens=cfg.diff.scaling_tokens)
        live = ~table["dead"].astype(bool)
        row = {"seconds": round(time.perf_counter() - t0, 1), "live": int(live.sum())}
        for side, tag in (("B", "B-only"), ("A", "A-only")):
            cand = scaling[(scaling["direction"] == side) & (scaling["role"] != "baseline")]
            row[f"{side}_delta_only"] = int(((table["tag"] == tag) & live).sum())
            row[f"{side}_after_scaling"] = int(cand["specific"].astype(bool).sum())
        row["removed_by_scaling"] = (row["B_delta_only"] + row["A_delta_only"]) - (row["B_after_scaling"] + row["A_after_scaling"])
        out[arch] = row
    total = lambda r, k: r[f"B_{k}"] + r[f"A_{k}"]  # noqa: E731
    out["l1_vs_batchtopk_delta_only"] = [total(out["l1"], "delta_only"), total(out["batchtopk"], "delta_only")]
    out["l1_removed_fraction"] = (out["l1"]["removed_by_scaling"] / total(out["l1"], "delta_only")
                                  if total(out["l1"], "delta_only") else None)
    out["ok"] = (total(out["l1"], "delta_only") > total(out["batchtopk"], "delta_only")
                 and out["l1"]["removed_by_scaling"] > 0)
    print(f"L1: {total(out['l1'], 'delta_only')} Δ-only exclusive latents, {total(out['l1'], 'after_scaling')} after "
          f"latent scaling; BatchTopK: {total(out['batchtopk'], 'delta_only')} → {total(out['batchtopk'], 'after_scaling')}")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
