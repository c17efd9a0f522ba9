"""Crosscoders trained side by side in worker processes (the seed and identity-control crosscoders of a run).

Small crosscoders use two threads poorly: on the 2-core reference machine a 300-step demo crosscoder takes 8.3 s on
two threads, 10.7 s on one, and two 1-thread processes side by side finish both in 11.3 s, so training them in
parallel processes is ~1.5x faster than one after the other. Workers are spawned (fresh interpreters: no forked torch
thread pools) and train with ``progress=False``; the parent shows one progress bar per crosscoder, read from the
training logs, and marks each stage finished as it completes. Stage directories and checkpoints are the same as in
sequential training, so a killed parallel run resumes either way.

Workers die with their parent: each sets the Linux parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGKILL)`` through
ctypes) as it starts, so a ``kill -9`` of the parent takes them down at once instead of leaving orphans training on.
prctl is immediate and costs nothing while the parent lives; a ``getppid`` check right after it closes the race with a
parent that died during start-up. Where prctl is unavailable (not Linux) a daemon thread polls the parent PID once a
second instead. (The signal follows the thread that spawned the worker: ``run_train_jobs`` spawns from the caller's
thread, which lives until the pool is done.)
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import json
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lm_diff.capture.store import ActivationStore
from lm_diff.console import LOG_EVERY_S
from lm_diff.crosscoder.train import train_crosscoder

PR_SET_PDEATHSIG = 1   # linux/prctl.h


@dataclass
class TrainJob:
    """One pending crosscoder: its label, crosscoder config, stage directory and model indices."""

    label: str
    config: Any
    stage_dir: Path
    models: tuple[int, int]


def train_worker(store_dir: str, xc: Any, out_dir: str, models: tuple[int, int], layer: int, threads: int) -> float:
    """One crosscoder in a worker process (spawned: a fresh interpreter with ``threads`` torch threads)."""
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    train_crosscoder(ActivationStore(store_dir), xc, out_dir, models=models, layer=layer, progress=False)
    return time.perf_counter() - t0


def die_with_parent(parent_pid: int) -> None:
    """Worker initializer: end this process when ``parent_pid`` dies (prctl on Linux, else a polling thread)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0:
                if os.getppid() != parent_pid:   # the parent died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="watch-parent").start()


def _watch_parent(parent_pid: int, every: float = 1.0) -> None:
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(every)


def worker_pool(workers: int) -> cf.ProcessPoolExecutor:
    """A pool of ``workers`` spawned processes that die with this one."""
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                  initializer=die_with_parent, initargs=(os.getpid(),))


def last_record(log: Path) -> dict:
    """The last complete line of a training log ({} if none yet)."""
    try:
        with open(log, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4096))
            lines = fh.read().split(b"\n")
        for line in reversed(lines[:-1] if len(lines) > 1 else lines):
            if line.strip():
                rec = json.loads(line)
                return rec if isinstance(rec, dict) and "step" in rec else {}
    except (OSError, ValueError):
        pass
    return {}


def last_step(log: Path) -> int:
    """Steps done according to a training log (its last complete line), 0 if none yet."""
    rec = last_record(log)
    try:
        return int(rec["step"]) + 1 if rec else 0
    except (KeyError, TypeError, ValueError):
        return 0


def status_line(label: str, steps: int, rec: dict) -> str:
    """One plain progress line of a training job: step, loss, L0, EV (for logs without a terminal)."""
    if not rec:
        return f"{label}: starting (0/{steps})"
    ev = " ".join(f"{v:.3f}" for v in rec.get("ev") or [])
    return (f"{label}: step {int(rec['step']) + 1}/{steps}  loss {float(rec.get('loss', float('nan'))):.4g}  "
            f"L0 {float(rec.get('l0', float('nan'))):.1f}  EV {ev}")


def train_workers(requested: int, pending: int) -> int:
    """Processes for ``pending`` crosscoders: ``requested`` (``crosscoder.workers``), or auto when 0 (≤ 4, ≤ torch
    threads); always 1 under torchrun, whose ranks train one crosscoder together."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return 1
    w = requested or min(4, torch.get_num_threads())
    return max(1, min(w, pending))


def run_train_jobs(jobs: list[TrainJob], store_dir: Path, layer: int, workers: int,
                   finish: Callable[[Path, dict, str, float], None], console: Any) -> None:
    """Train ``jobs`` in ``workers`` spawned processes with a progress bar each; ``finish(stage_dir, summary, label,
    seconds)`` is called as each one completes. The first failure cancels the rest and is raised."""
    threads = max(1, torch.get_num_threads() // workers)
    console.rule(f"[bold]{len(jobs)} crosscoders, {workers} at a time ({threads} thread{'s' * (threads > 1)} each)")
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as bar, \
            worker_pool(workers) as pool:
        futures = {}
        for job in jobs:
            task = bar.add_task(job.label, total=job.config.steps)
            fut = pool.submit(train_worker, str(store_dir), job.config, str(job.stage_dir / "crosscoder"), job.models,
                              layer, threads)
            futures[fut] = (job, task)
        waiting = set(futures)
        plain = not getattr(console, "is_terminal", True)  # a log file: rich draws the bars only at the end
        said = time.monotonic()
        try:
            while waiting:
                finished, waiting = cf.wait(waiting, timeout=0.5)
                for job, task in futures.values():
                    bar.update(task, completed=last_step(job.stage_dir / "crosscoder" / "train_log.jsonl"))
                if plain and time.monotonic() - said >= LOG_EVERY_S:
                    said = time.monotonic()
                    for fut, (job, _) in futures.items():
                        if fut in waiting:
                            console.print(status_line(job.label, job.config.steps,
                                                      last_record(job.stage_dir / "crosscoder" / "train_log.jsonl")),
                                          highlight=False)
                for fut in finished:
                    job, task = futures[fut]
                    seconds = fut.result()
                    bar.update(task, completed=job.config.steps)
                    finish(job.stage_dir, {"crosscoder": str(job.stage_dir / "crosscoder"), "steps": job.config.steps,
                                           "seed": job.config.seed, "models": list(job.models), "workers": workers,
                                           "threads": threads}, job.label, seconds)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
