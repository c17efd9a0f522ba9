"""benchmarks/bench_gpu.py: the no-GPU path and the whole code path at toy shapes, without lm_eval or nnsight."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks" / "bench_gpu.py"
# importing lm_eval or nnsight fails in the child (the GPU machine has neither)
BLOCK = "import sys, runpy; sys.modules['lm_eval'] = None; sys.modules['nnsight'] = None; sys.argv = {argv!r}; " \
        "runpy.run_path({path!r}, run_name='__main__')"


def _run(args: list[str]) -> tuple[str, dict]:
    code = BLOCK.format(argv=[str(BENCH), *args], path=str(BENCH))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    return proc.stdout, json.loads(lines[-1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the machine without a GPU")
def test_skips_plainly_without_cuda():
    out, res = _run([])
    assert "skipped: no CUDA device" in out
    assert res["skipped"] is True


def test_tiny_runs_every_section_without_lm_eval_or_nnsight():
    out, res = _run(["--tiny", "--budget-s", "300"])
    assert res["skipped"] is False and res["errors"] == {}, res["errors"]
    assert res["matmul"]["bf16_tflops"] > 0
    cap = res["capture"]
    assert cap["capture_gpu_tok_s"] > 0 and cap["two_full_forwards_tok_s"] > 0
    assert "error" not in cap["capture_store"], cap["capture_store"]
    tr = res["train"]
    assert tr["fp32_tok_s"] > 0 and tr["bf16_tok_s"] > 0
    # bf16 GEMM operands change the arithmetic a little, not the result
    assert abs(tr["fp32_loss"] - tr["bf16_loss"]) < 0.05 * abs(tr["fp32_loss"])
    assert res["trainer"]["tok_s_incl_save"] > 0 and res["trainer"]["final_loss"] > 0
    assert "bench_gpu on" in out
