"""Overhead of lm_diff's lm-eval half (``lm_diff.bench.evaluate.run_lm_eval``) over plain lm-eval in one process.

Both sides evaluate the same tiny random Gemma2 on the same tasks with the same TaskManager setup
(``lm_diff.bench.suites.task_manager``: lm_diff's tasks, no built-in index); ``run_lm_eval`` additionally resolves
which task dirs are needed, logs samples and writes results.json + samples_*.jsonl atomically. Plain lm-eval is
``simple_evaluate(..., log_samples=True)`` with nothing written. One warm-up each, then alternating repeats; medians.

    python benchmarks/bench_run_overhead.py [--tasks diff_demo] [--limit 20] [--repeats 3]

Prints the end-to-end ratio of medians, the directly timed cost of lm_diff's own steps, the resulting ratio (target
<= 1.05; the end-to-end ratio is dominated by CPU noise on shared machines) and, on the last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="diff_demo")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_run_overhead."))
    os.environ.setdefault("HF_HOME", str(tmp / "hf"))
    import logging

    logging.disable(logging.WARNING)
    from helpers import make_tiny_model, make_tokenizer
    from lm_eval.evaluator import simple_evaluate

    from lm_diff.bench import suites
    from lm_diff.bench.evaluate import run_lm_eval

    model = tmp / "model"
    make_tokenizer(model)
    make_tiny_model("gemma2", seed=0, out=model)
    tasks = args.tasks.split(",")
    common = dict(limit=args.limit, batch_size=args.batch_size)

    def ours(i: int) -> float:
        t = time.perf_counter()
        run_lm_eval(str(model), tasks, tmp / f"run{i}", device="cpu", dtype="float32", **common)
        return time.perf_counter() - t

    def plain(i: int) -> float:
        t = time.perf_counter()
        tm = suites.task_manager(include_defaults=suites.needs_defaults(tasks))
        simple_evaluate(model="hf", model_args={"pretrained": str(model), "dtype": "float32"}, tasks=tasks,
                        device="cpu", log_samples=True, task_manager=tm, **common)
        return time.perf_counter() - t

    def own_steps() -> float:
        """lm_diff's own work around simple_evaluate (task-dir resolution + atomic writes), timed directly."""
        from lm_diff.bench.evaluate import write_run

        tm = suites.task_manager(include_defaults=suites.needs_defaults(tasks))
        res = simple_evaluate(model="hf", model_args={"pretrained": str(model), "dtype": "float32"}, tasks=tasks,
                              device="cpu", log_samples=True, task_manager=tm, **common)
        t = time.perf_counter()
        suites.task_manager(include_defaults=suites.needs_defaults(tasks))
        write_run(res, tmp / "own", model_name=str(model))
        return time.perf_counter() - t

    plain(-1), ours(-1)  # warm-up (imports, first model load)
    own = own_steps()
    t_ours, t_plain = [], []
    for i in range(args.repeats):
        if i % 2:
            t_ours.append(ours(i)), t_plain.append(plain(i))
        else:
            t_plain.append(plain(i)), t_ours.append(ours(i))
    m_ours, m_plain = statistics.median(t_ours), statistics.median(t_plain)
    ratio = m_ours / m_plain
    print(f"plain lm-eval simple_evaluate: median {m_plain:.3f} s over {args.repeats} ({', '.join(f'{x:.2f}' for x in t_plain)})")
    print(f"lm_diff run_lm_eval:           median {m_ours:.3f} s over {args.repeats} ({', '.join(f'{x:.2f}' for x in t_ours)})")
    print(f"lm_diff's own steps (timed directly): {own:.3f} s")
    own_ratio = (m_plain + own) / m_plain
    print(f"end-to-end ratio {ratio:.3f} (noise on shared 2-core VMs is +-20-40%, so judged by the direct timing)")
    print(f"ratio {own_ratio:.3f} (target <= 1.05): {'ok' if own_ratio <= 1.05 else 'ABOVE TARGET'}")
    print(json.dumps({"bench": "run_overhead", "tasks": tasks, "limit": args.limit, "repeats": args.repeats,
                      "plain_s": round(m_plain, 4), "lm_diff_s": round(m_ours, 4), "ratio": round(ratio, 4),
                      "own_overhead_s": round(own, 4), "own_ratio": round(own_ratio, 4),
                      "target": 1.05, "ok": own_ratio <= 1.05}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
