"""Recovery of the planted category shifts by the latent half, over reruns with different crosscoder seeds (issue 15).

For each organism family (a config under configs/, e.g. ``demo`` and ``natural``) the full pipeline runs ``--reruns``
times with crosscoder seed sets [0, 1, 2], [3, 4, 5], ... (``--seeds-per-run``) into one folder per family (benchmarks and the capture are
cached, every rerun trains its own crosscoders), and ``--null-reruns`` times on the family's null pair (the fine-tune
replaced by ``null``, a fine-tune on the base mix). From each report.json it reads, per category, the headline (the
category change test, ``categories[].latent_change``, docs/method.md#category-change: are the model-specific latents
of A and B enriched in the category against the shared ones? It has no A/B sign, so a planted gain and a planted loss
are both found as an enrichment) and the seed paper's direction statistic (the S-vs-T share ratio,
``latent_shift``), and checks the targets on the headline:

- every planted category: enriched (ratio > 0), interval excluding no change and q ≤ 0.01 in ≥ 4 of 5 reruns;
- no unplanted category with q < 0.05 or an interval excluding no change in any rerun;
- null pairs: no category significant (q < 0.05 or an interval excluding no change) in any rerun;
- identity control: 0 specific latents; the first (cold) full run ≤ 300 s on this machine (measured only when the
  family's folder starts empty; a reused folder reports the rerun's time and says so).

Informational, in no target: the direction statistic's q and ratio per rerun, ``direction_hits`` (reruns whose share
ratio has the planted sign at q ≤ 0.01 with an interval excluding no change) and, on the null pairs, the categories
whose direction q < 0.05.

Prints a table per family and, on its last line, one JSON object with every figure and ``ok`` (true only when every
target holds). ``--set KEY=VALUE`` is passed to every run (to evaluate another configuration on both families).

    python benchmarks/bench_recovery.py [--families demo,natural] [--reruns 5] [--null-reruns 3] [--out runs/recovery]
                                        [--cold-run]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLANTED_Q = 0.01
UNPLANTED_Q = 0.05
HIT_SHARE = 0.8
FULL_RUN_MAX_S = 300.0


def _num(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def excludes_zero(ls: dict) -> bool:
    lo, hi = _num(ls.get("ci_low")), _num(ls.get("ci_high"))
    return (lo is not None and lo > 0) or (hi is not None and hi < 0)


def read_run(report_path: Path) -> dict:
    """Per-category verdicts, the identity control and the timings of one finished run."""
    r = json.loads(report_path.read_text())
    cats = {}
    for c in r["categories"]:
        ls = c.get("latent_shift") or {}
        if c["name"] == "unassigned" or not ls:
            continue
        lc = c.get("latent_change") or {}
        if not lc:
            raise SystemExit(f"{report_path}: no latent_change (written before the change test); rerun the pipeline")
        cats[c["name"]] = {"q": _num(lc.get("q")), "ratio": _num(lc.get("ratio")),
                           "ci_low": _num(lc.get("ci_low")), "ci_high": _num(lc.get("ci_high")),
                           "n_specific": _num(lc.get("n_specific")), "n_shared": _num(lc.get("n_shared")),
                           "insufficient": bool(lc.get("insufficient")), "excludes_zero": excludes_zero(lc),
                           "mds": _num(lc.get("mds")), "planted_sign": c.get("planted_sign"),
                           # the seed paper's direction statistic, informational
                           "dir_q": _num(ls.get("q_value")), "dir_ratio": _num(ls.get("share_ratio")),
                           "dir_excludes_zero": excludes_zero(ls), "n_S": _num(ls.get("n_S")),
                           "n_T": _num(ls.get("n_T"))}
    ident = (r.get("controls") or {}).get("identity") or {}
    n_ident = sum(int(ident.get(k) or 0) for k in ("n_b_specific", "n_a_specific"))
    timings = (r.get("run") or {}).get("timings") or {}
    return {"categories": cats, "identity_specific": n_ident, "total_s": _num(timings.get("total"))}


def run_pipeline(config: str, out: Path, sets: list[str], log: Path) -> tuple[float, int]:
    cmd = [sys.executable, "-m", "lm_diff.cli", "run", config, "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    with log.open("a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    return time.perf_counter() - t0, rc


def null_spec(config: str) -> str:
    """The family's null model: its fine-tune's organisms:// URI with the model name replaced by ``null``."""
    sys.path.insert(0, str(ROOT))
    from lm_diff.config import load_config  # noqa: PLC0415 - the benchmark imports lm_diff only when it runs

    spec = load_config(config).models.finetuned
    if not spec.startswith("organisms://"):
        raise SystemExit(f"{config}: its fine-tune is not an organism ({spec}); no null pair to run")
    return spec.rsplit("/", 1)[0] + "/null"


def evaluate(family: str, runs: list[dict], nulls: list[dict]) -> dict:
    planted = {c: v["planted_sign"] for c, v in runs[0]["categories"].items()} if runs else {}
    out: dict = {"family": family, "reruns": len(runs), "null_reruns": len(nulls), "categories": {}, "failures": []}
    for c, sign in planted.items():
        rows = [r["categories"].get(c) or {} for r in runs]
        qs = [x.get("q") for x in rows]
        ratios = [x.get("ratio") for x in rows]
        entry = {"planted_sign": sign, "q": qs, "ratio": ratios,
                 "ci": [[x.get("ci_low"), x.get("ci_high")] for x in rows],
                 "q_spread": _spread(qs), "ratio_spread": _spread(ratios),
                 "mds": _spread([x.get("mds") for x in rows]),
                 "n_specific": [x.get("n_specific") for x in rows],
                 # informational (no target): the seed paper's direction statistic (S vs T share ratio)
                 "direction_q": [x.get("dir_q") for x in rows], "direction_ratio": [x.get("dir_ratio") for x in rows],
                 "direction_q_spread": _spread([x.get("dir_q") for x in rows]),
                 "direction_ratio_spread": _spread([x.get("dir_ratio") for x in rows])}
        if sign:
            hits = [bool(x.get("q") is not None and x["q"] <= PLANTED_Q and x.get("excludes_zero")
                         and x.get("ratio") is not None and x["ratio"] > 0) for x in rows]
            entry["hits"] = sum(hits)
            entry["direction_hits"] = sum(_direction_hit(x, sign) for x in rows)
            if sum(hits) < math.ceil(HIT_SHARE * len(rows)):
                out["failures"].append(f"{family}: planted {c} ({'+' if sign > 0 else '-'}) found in {sum(hits)} of "
                                       f"{len(rows)} reruns (target >= {math.ceil(HIT_SHARE * len(rows))})")
        else:
            false = [i for i, x in enumerate(rows)
                     if (x.get("q") is not None and x["q"] < UNPLANTED_Q) or x.get("excludes_zero")]
            entry["false_positive_reruns"] = false
            if false:
                out["failures"].append(f"{family}: unplanted {c} significant in reruns {false}")
        out["categories"][c] = entry
    null_false = {}
    for i, r in enumerate(nulls):
        bad = [c for c, x in r["categories"].items()
               if (x.get("q") is not None and x["q"] < UNPLANTED_Q) or x.get("excludes_zero")]
        if bad:
            null_false[i] = bad
    out["null_false_positives"] = null_false
    out["null_direction_positives"] = {i: bad for i, r in enumerate(nulls)  # informational, no target
                                       if (bad := [c for c, x in r["categories"].items()
                                                   if x.get("dir_q") is not None and x["dir_q"] < UNPLANTED_Q])}
    if null_false:
        out["failures"].append(f"{family}: null pair significant: {null_false}")
    ident = [r["identity_specific"] for r in runs + nulls]
    out["identity_specific"] = ident
    if any(ident):
        out["failures"].append(f"{family}: identity control found specific latents {ident}")
    out["full_run_s"] = runs[0].get("wall_s") if runs else None
    out["full_run_cold"] = bool(runs and runs[0].get("cold"))
    out["rerun_wall_s"] = [r.get("wall_s") for r in runs]
    out["null_wall_s"] = [r.get("wall_s") for r in nulls]
    if not out["full_run_cold"]:
        out["failures"].append(f"{family}: the full-run time was not measured (the family's folder was reused; "
                               "run into an empty --out)")
    elif out["full_run_s"] is not None and out["full_run_s"] > FULL_RUN_MAX_S:
        out["failures"].append(f"{family}: full run {out['full_run_s']:.0f} s > {FULL_RUN_MAX_S:.0f} s")
    return out


def _direction_hit(x: dict, sign: int) -> bool:
    q, r = x.get("dir_q"), x.get("dir_ratio")
    return bool(q is not None and q <= PLANTED_Q and x.get("dir_excludes_zero") and r is not None
                and math.copysign(1, r) == sign)


def _spread(xs):
    v = [x for x in xs if x is not None and math.isfinite(x)]
    if not v:
        return None
    return {"min": min(v), "median": statistics.median(v), "max": max(v)}


def _fmt(x, pct=False):
    if x is None:
        return "—"
    if pct:
        return "∞" if math.isinf(x) else f"{100 * x:+.0f}%"
    return f"{x:.3f}"


def print_table(res: dict) -> None:
    cold = "cold" if res.get("full_run_cold") else "folder reused, not a cold time"
    print(f"\n{res['family']}: {res['reruns']} reruns, {res['null_reruns']} null reruns; "
          f"first full run {res['full_run_s'] or float('nan'):.0f} s ({cold})")
    print(f"{'category':22s} {'planted':>7s}  {'changed: q per rerun':36s} {'enrichment per rerun':36s} "
          f"{'verdict':16s} direction (info): share ratio per rerun, hits")
    for c, e in res["categories"].items():
        qs = " ".join(_fmt(q) for q in e["q"])
        rs = " ".join(_fmt(r, pct=True) for r in e["ratio"])
        sign = {1: "+", -1: "−", 0: "0"}.get(e["planted_sign"], "?")
        verdict = (f"{e['hits']}/{res['reruns']} found" if e["planted_sign"] else
                   ("clean" if not e["false_positive_reruns"] else f"false + in {e['false_positive_reruns']}"))
        dr = " ".join(_fmt(r, pct=True) for r in e.get("direction_ratio") or [])
        dh = f" ({e['direction_hits']}/{res['reruns']} right sign at q ≤ {PLANTED_Q})" if e["planted_sign"] else ""
        print(f"{c:22s} {sign:>7s}  {qs:36s} {rs:36s} {verdict:16s} {dr}{dh}")
    print(f"null pair: {'clean' if not res['null_false_positives'] else res['null_false_positives']}; "
          f"identity control specific latents per run: {res['identity_specific']}")
    print(f"null pair, direction statistic at q < {UNPLANTED_Q} (informational): "
          f"{res.get('null_direction_positives') or 'none'}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", default="demo,natural", help="configs under configs/ (comma-separated)")
    ap.add_argument("--reruns", type=int, default=5)
    ap.add_argument("--null-reruns", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "runs" / "recovery"))
    ap.add_argument("--seeds-per-run", type=int, default=3, help="crosscoder seeds pooled in one run")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to every run")
    ap.add_argument("--cold-run", action="store_true",
                    help="first time one full run (seeds 0-2) from an empty folder (OUT/FAMILY-cold, removed first): "
                         "the time target when the reruns reuse a folder that already holds stages")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    out_root = Path(args.out)
    out_root.mkdir(parents=True, exist_ok=True)
    log = out_root / "bench_recovery.log"
    results = []
    for family in [f.strip() for f in args.families.split(",") if f.strip()]:
        config = str(ROOT / "configs" / f"{family}.yaml")
        if not Path(config).exists():
            raise SystemExit(f"{config}: no such config (families are configs under configs/)")
        runs, nulls = [], []
        cold_s = None
        if args.cold_run:
            cold_dir = out_root / f"{family}-cold"
            shutil.rmtree(cold_dir, ignore_errors=True)
            cold_s, rc = run_pipeline(config, cold_dir, args.set + [f"controls.seeds={list(range(args.seeds_per_run))}"],
                                      log)
            if rc != 0:
                raise SystemExit(f"{family} cold run failed (exit {rc}); see {log}")
            print(f"{family} cold run from an empty folder: {cold_s:.0f} s", flush=True)
        for kind, n, extra in (("run", args.reruns, []), ("null", args.null_reruns, [f"models.finetuned={null_spec(config)}"])):
            folder = out_root / (family if kind == "run" else f"{family}-null")
            cold = not (folder / "stages").exists()
            for r in range(n):
                k = args.seeds_per_run
                seeds = list(range(k * r, k * r + k))
                wall, rc = run_pipeline(config, folder, args.set + extra + [f"controls.seeds={seeds}"], log)
                if rc != 0:
                    raise SystemExit(f"{family} {kind} rerun {r} failed (exit {rc}); see {log}")
                kept = folder / f"report-seeds-{'-'.join(map(str, seeds))}.json"  # each rerun's report, for later reading
                kept.write_bytes((folder / "report.json").read_bytes())
                got = read_run(kept)
                got["wall_s"] = wall
                got["cold"] = cold and r == 0
                if kind == "run" and r == 0 and cold_s is not None:
                    got["wall_s"], got["cold"] = cold_s, True
                (runs if kind == "run" else nulls).append(got)
                print(f"{family} {kind} {r} seeds {seeds}: {wall:.0f} s", flush=True)
        res = evaluate(family, runs, nulls)
        print_table(res)
        results.append(res)
    failures = [f for r in results for f in r["failures"]]
    summary = {"bench": "recovery", "families": results, "settings": args.set,
               "seeds_per_run": args.seeds_per_run, "failures": failures,
               "ok": bool(results) and not failures}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
