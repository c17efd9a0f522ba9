"""README tables from saved benchmark and plan outputs (``benchmarks/results/``), for ``python -m lm_diff.dev.figures``.

Each source is the output of a command, kept in the repository because it needs a machine the tests do not have
(a GPU) or is slow to recompute; the last line of each file is the JSON object the command printed:

- ``gpu``: ``benchmarks/results/bench_gpu.log`` and ``gpu_smoke.log`` (``python3 benchmarks/bench_gpu.py`` and
  ``python3 benchmarks/gpu_smoke.py`` on a GPU machine);
- ``plan``: ``benchmarks/results/plan_gemma.json`` (``lm-diff plan configs/gemma.yaml --json``, rewritten by
  ``make figures``);
- ``recovery``: ``benchmarks/results/recovery.log`` and ``recovery_natural.log`` (``python benchmarks/bench_recovery.py
  --families demo > benchmarks/results/recovery.log``, ``--families natural > benchmarks/results/recovery_natural.log``:
  the latent half's recovery of the planted shifts over crosscoder-seed reruns, ~30 min per family on 2 cores);
- ``train``: ``benchmarks/results/bench_train.log`` (``python benchmarks/bench_train.py > benchmarks/results/bench_train.log``
  on an idle machine: the crosscoder training step against the reference trainer's anchor, ≤ 4 min).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from lm_diff.errors import UserError

RESULTS = Path(__file__).resolve().parent.parent.parent / "benchmarks" / "results"


def last_json(path: Path) -> dict:
    """The JSON object of ``path`` (the whole file, or its last non-empty line); one UserError naming the file otherwise."""
    if not path.is_file():
        raise UserError(f"{path} is missing: run the command named in lm_diff/dev/results.py to produce it")
    text = path.read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    obj = None
    for candidate in (text, lines[-1] if lines else ""):  # a whole-file JSON document, or a log's last line
        try:
            obj = json.loads(candidate)
            break
        except json.JSONDecodeError:
            continue
    if not isinstance(obj, dict):
        raise UserError(f"{path}: the last line is not a JSON object")
    return obj


def _md(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _gb(x: Any) -> str:
    return f"{x / 1e9:.1f} GB" if isinstance(x, (int, float)) else "–"


def _time(s: Any) -> str:
    if not isinstance(s, (int, float)):
        return "–"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h"


def table_gpu(root: Path = RESULTS) -> str:
    b = last_json(root / "bench_gpu.log")
    smoke = last_json(root / "gpu_smoke.log")
    if b.get("skipped"):
        raise UserError(f"{root / 'bench_gpu.log'} is a skipped run (no GPU): rerun it on a GPU machine")
    cap, tr, mm, t2 = b["capture"], b["train"], b["matmul"], b.get("trainer", {})
    rows = [
        ["bf16 matmul 8192² (measured)", f"{mm['bf16_tflops']:.0f} TFLOP/s", ""],
        ["two full forwards (Gemma-2-2B shape, bf16)", f"{cap['two_full_forwards_tok_s']:,} tok/s",
         f"batch {cap['batch']}, {cap['params_per_model_b']} B parameters per model"],
        [f"paired capture of layer {cap['layer']} (hooks, stop after the layer)", f"{cap['capture_gpu_tok_s']:,} tok/s",
         f"{cap['ratio_gpu']}× the two forwards; with the host copy {cap['capture_host_tok_s']:,} tok/s; peak "
         f"{cap['peak_gib']} GiB"],
        ["lm_diff capture() end to end (tokenise, hooks, fp16 shards on disk)",
         f"{cap['capture_store']['tok_s']:,} tok/s", f"{cap['capture_store']['tokens']:,} tokens"],
        [f"crosscoder step, bf16 GEMM operands ({tr['shape']})", f"{tr['bf16_tok_s']:,} tok/s",
         f"{tr['bf16_step_ms']} ms/step, {tr['bf16_frac_of_bf16_matmul']:.2f} of the bf16 matmul rate "
         f"({tr['flop_convention']}); peak {tr['peak_gib']} GiB"],
        ["crosscoder step, fp32", f"{tr['fp32_tok_s']:,} tok/s",
         f"{tr['fp32_step_ms']} ms/step, {tr['fp32_frac_of_fp32_matmul']:.2f} of the fp32 matmul rate"],
        ["train_crosscoder() end to end", f"{t2.get('tok_s_incl_save', 0):,} tok/s",
         f"{t2.get('steps')} steps incl. start-up and checkpoint; peak {t2.get('peak_gib')} GiB"],
    ]
    checks = smoke.get("checks", {})
    secs = (smoke.get("run") or {}).get("seconds", {})
    rows.append(["device smoke: capture → train → latent table → scaling → metrics on the GPU",
                 "ok" if smoke.get("ok") else "FAILED",
                 ", ".join(k for k, v in checks.items() if v) + f"; stage seconds {secs}"])
    head = f"*{b.get('device_name')}, torch {b.get('torch')}.*\n\n"
    return head + _md(["what", "rate", "detail"], rows)


def table_plan(root: Path = RESULTS) -> str:
    p = last_json(root / "plan_gemma.json")
    acc = p["accelerator"]
    rows = [[s["stage"], f"{s['flops']:.3g}", _time(s["seconds"]), _gb(s["device_memory_bytes"]),
             _gb(s["host_memory_bytes"]), _gb(s["disk_bytes"])] for s in p["stages"]]
    t = p["total"]
    rows.append(["**total**", f"{t['flops']:.3g}", _time(t["seconds"]), _gb(t["device_memory_bytes"]),
                 _gb(t["host_memory_bytes"]), _gb(t["disk_bytes"])])
    u = ", ".join(f"{k} {v:.0%}" for k, v in acc["utilisation"].items())
    head = (f"*{p['config']} on one {acc['description']} (peak {acc['peak_bf16_flops'] / 1e12:g} TFLOP/s bf16, "
            f"{acc['peak_fp32_flops'] / 1e12:g} fp32; utilisation assumed: {u}).*\n\n")
    return head + _md(["stage", "FLOPs", "time", "device memory", "host memory", "disk"], rows)


def _pct(x: Any) -> str:
    if not isinstance(x, (int, float)):
        return "–"
    return "∞" if x == float("inf") else f"{100 * x:+.0f} %"


def _spread(s: Any, fmt: Callable[[Any], str]) -> str:
    if not isinstance(s, dict):
        return "–"
    return f"{fmt(s['median'])} [{fmt(s['min'])}, {fmt(s['max'])}]"


RECOVERY_LOGS = ("recovery.log", "recovery_natural.log")


def table_recovery(root: Path = RESULTS) -> str:
    """One block per family, from every recovery log present (``recovery.log``: the demo family;
    ``recovery_natural.log``: the natural family; each family runs ~30 min, so they are run and kept apart)."""
    logs = [root / name for name in RECOVERY_LOGS if (root / name).is_file()]
    if not logs:
        last_json(root / RECOVERY_LOGS[0])  # raises the "missing: run ..." message
    return "\n\n".join(_recovery_block(last_json(path), path.name) for path in logs)


def _recovery_block(b: dict, source: str) -> str:
    parts = []
    for fam in b["families"]:
        rows = []
        for c, e in fam["categories"].items():
            sign = {1: "gain", -1: "loss", 0: "–"}.get(e["planted_sign"], "?")
            if e["planted_sign"]:
                verdict = f"found in {e['hits']} of {fam['reruns']}"
                direction = f"right sign in {e.get('direction_hits', 0)} of {fam['reruns']}"
            else:
                fp = e.get("false_positive_reruns") or []
                verdict = "clean" if not fp else f"false positive in {len(fp)} of {fam['reruns']}"
                direction = "–"
            rows.append([c, sign, verdict, _spread(e["q_spread"], lambda x: f"{x:.3f}" if x >= 0.001 else "< 0.001"),
                         _spread(e["ratio_spread"], _pct), _spread(e.get("mds"), _pct), direction,
                         _spread(e.get("direction_ratio_spread"), _pct)])
        nulls = fam["null_false_positives"]
        time = (f"first full run {_time(fam['full_run_s'])} (cold)" if fam.get("full_run_cold") else
                f"first rerun {_time(fam['full_run_s'])} (its folder was reused: not a cold time)")
        head = (f"**{fam['family']}** — {fam['reruns']} reruns (crosscoder seeds 0–2, 3–5, …), "
                f"{fam['null_reruns']} null-pair reruns: {'clean' if not nulls else 'significant: ' + str(nulls)}; "
                f"identity control specific latents {fam['identity_specific']}; {time}.\n\n")
        parts.append(head + _md(["category", "planted", "changed (q ≤ 0.01, CI above no change)",
                                 "q median [min, max]", "enrichment median [min, max]", "detectable (median)",
                                 "direction (share ratio S/T, q ≤ 0.01)", "share ratio median [min, max]"], rows))
    settings = ", ".join(b.get("settings") or []) or "the default configuration"
    verdict = "every target met" if b.get("ok") else "targets missed: " + "; ".join(b.get("failures") or [])
    return f"*`{source}`, {settings}; {verdict}.*\n\n" + "\n\n".join(parts)


# The anchor of the training-speed table (issue 19): lm_diff's step before the sparse kernels, measured side by side
# with the reference trainer (crosscoder_learning b2363ed) at the benchmark's config, as ms/step and matmul fraction.
# The reference's own ms/step travel in the benchmark's output (``reference_ms``).
TRAIN_BEFORE = {"batchtopk": (158.0, 0.92), "batchtopk_aux": (387.0, 0.39), "l1": (175.0, 0.85)}
TRAIN_LABELS = {"batchtopk": "BatchTopK, aux idle", "batchtopk_aux": "BatchTopK, aux-k active (all latents dead, k_aux 128)",
                "l1": "L1"}


def table_train(root: Path = RESULTS) -> str:
    b = last_json(root / "bench_train.log")
    v = b["variants"]
    rows = []
    for name, label in TRAIN_LABELS.items():
        e = v[name]
        before_ms, before_frac = TRAIN_BEFORE[name]
        now = f"{e['ms']:.1f} ({e['matmul_fraction']:.2f}) → {e['speedup_vs_reference']:.2f}×"
        dense = v.get(f"{name}_dense")
        if dense:
            now += f" (dense kernels side by side: {dense['ms']:.1f}, {dense['matmul_fraction']:.2f})"
        met = e["speedup_vs_reference"] >= e["target_speedup"]
        target = f"≥ {e['target_speedup']}×" + ("" if met else
                                                 f" (missed by {e['target_speedup'] - e['speedup_vs_reference']:.2f}×)")
        rows.append([label, f"{e['reference_ms']:.0f}", f"{before_ms:.0f} ({before_frac:.2f})", now, target])
    c = b["config"]
    dropped = sum(e.get("dropped", 0) for e in v.values())
    steps = sum(e.get("steps", 0) for e in v.values())
    head = (f"*{c['models']} models × d {c['d_model']} → {c['dict_size']} latents, batch {c['batch']}, k {c['k']}, "
            f"{c['dtype']}, {c['threads']} threads, {c['device']}; 2048² matmul {b['matmul_2048_ms']} ms in the same "
            f"process; {dropped} of {steps} timed steps dropped by the foreign-load filter; "
            f"{'every target met' if b.get('ok') else 'a target missed'}.*\n\n")
    table = _md(["variant", "reference ms/step", "lm_diff before, ms/step (fraction)",
                 "lm_diff now, ms/step (fraction) → speed-up vs reference", "target"], rows)
    scaling = _md(["d_model", "latents", "ms/step", "tokens/s", "fraction of a 2048² matmul"],
                  [[s["d_model"], s["dict_size"], f"{s['ms']:.1f}", s["tokens_per_s"], f"{s['matmul_fraction']:.2f}"]
                   for s in b.get("scaling", [])])
    return head + table + "\n\nScaling (BatchTopK, aux idle, same run):\n\n" + scaling + f"\n\nGPU: {b.get('gpu', '–')}."


FILE_TABLES: dict[str, Callable[[], str]] = {"gpu": table_gpu, "plan": table_plan, "recovery": table_recovery,
                                             "train": table_train}
SOURCES = {"gpu": "benchmarks/results/bench_gpu.log, gpu_smoke.log", "plan": "benchmarks/results/plan_gemma.json",
           "recovery": "benchmarks/results/recovery.log, recovery_natural.log", "train": "benchmarks/results/bench_train.log"}
