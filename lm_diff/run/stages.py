"""Content-hashed stage directories under ``OUT/stages`` and the lock that keeps one run per output folder.

Each stage lives in ``OUT/stages/<name>-<hash>/``; the hash covers exactly the config sections the stage reads and the
directory names of the upstream stages it reads, so a rerun reuses finished stages and a changed config recomputes
only what depends on it. A stage is finished when its ``DONE.json`` exists.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional

from filelock import FileLock, Timeout

from lm_diff import console
from lm_diff.errors import UserError
from lm_diff.io import hash_obj, read_json, write_json

STAGES = "stages"
LOCK = ".lm_diff.lock"
HOLDER = ".lm_diff.lock.json"


class Stages:
    """Content-hashed stage directories under ``OUT/stages``."""

    def __init__(self, out: Path, force: bool = False):
        self.out = Path(out)
        self.force = force
        self.root = self.out / STAGES
        self.root.mkdir(parents=True, exist_ok=True)
        self._forced: set[Path] = set()
        self.timings: dict[str, float] = {}

    def dir(self, name: str, key: Any) -> Path:
        d = self.root / f"{name}-{hash_obj(key, 12)}"
        if self.force and d not in self._forced:
            shutil.rmtree(d, ignore_errors=True)
            self._forced.add(d)
        d.mkdir(parents=True, exist_ok=True)
        if not (d / "KEY.json").exists():
            write_json(d / "KEY.json", key)
        return d

    @staticmethod
    def done(d: Path) -> Optional[dict]:
        p = d / "DONE.json"
        return read_json(p) if p.exists() else None

    def run(self, name: str, key: Any, fn: Callable[[Path], dict], label: Optional[str] = None) -> tuple[Path, dict]:
        """Run ``fn(stage_dir) -> summary`` unless the stage is already finished; return (dir, summary)."""
        d = self.dir(name, key)
        summary = self.done(d)
        con = console.out()
        if summary is not None:
            con.print(f"[dim]✓ {label or name}: cached in {d}[/dim]")
            return d, summary
        t0 = time.perf_counter()
        con.rule(f"[bold]{label or name}")
        summary = fn(d) or {}
        self.finish(d, summary, label or name, time.perf_counter() - t0)
        return d, summary

    def finish(self, d: Path, summary: dict, label: str, seconds: float) -> None:
        """Mark stage ``d`` finished (DONE.json with its summary and time) and say so."""
        summary["seconds"] = round(seconds, 2)
        write_json(d / "DONE.json", summary)
        self.timings[label] = summary["seconds"]
        console.out().print(f"[green]✓ {label}[/green] → {d} ({summary['seconds']:.1f} s)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class OutputLock:
    """One ``lm-diff run`` per output folder: an OS file lock on ``OUT/.lm_diff.lock`` plus ``OUT/.lm_diff.lock.json``
    naming the holder (PID, start time). A second run is refused with the holder named; a holder file left by a
    killed run (its PID gone, the OS lock released with the process) is reported and taken over."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.lock = FileLock(str(self.out / LOCK), timeout=0)
        self.took_over: Optional[dict] = None

    def holder(self) -> Optional[dict]:
        p = self.out / HOLDER
        try:
            return read_json(p) if p.exists() else None
        except ValueError:
            return None

    def acquire(self) -> "OutputLock":
        self.out.mkdir(parents=True, exist_ok=True)
        if int(os.environ.get("RANK", "0") or 0) != 0:
            return self  # a torchrun job holds the folder once, through rank 0; its other ranks share that lock
        try:
            self.lock.acquire()
        except Timeout:
            h = self.holder() or {}
            raise UserError(f"{self.out} is in use by another lm-diff run (PID {h.get('pid', '?')}, started "
                            f"{h.get('started', '?')}); wait for it to finish or pass another --out") from None
        prev = self.holder()
        if prev and prev.get("pid") != os.getpid() and not _pid_alive(int(prev.get("pid", -1))):
            self.took_over = prev
            console.err().print(f"[yellow]taking over the lock of a run that is gone[/yellow] (PID {prev.get('pid')}, "
                                f"started {prev.get('started')})")
        write_json(self.out / HOLDER, {"pid": os.getpid(),
                                       "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
        return self

    def release(self) -> None:
        if self.lock.is_locked:
            (self.out / HOLDER).unlink(missing_ok=True)
            self.lock.release()

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
