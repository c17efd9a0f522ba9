"""Training workers die with their parent: kill -9 the parent, the (busy) worker is gone within a few seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PARENT = """
import sys, time
sys.path.insert(0, {root!r})
from lm_diff.crosscoder.workers import worker_pool
pool = worker_pool(1)
import os
pid = pool.submit(os.getpid).result()
pool.submit(time.sleep, 120)          # the worker is busy, like a training job
print(pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_worker_dies_with_killed_parent():
    parent = subprocess.Popen([sys.executable, "-c", PARENT.format(root=str(ROOT))], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    worker = None
    try:
        worker = int(parent.stdout.readline())
        assert _alive(worker)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 5
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker), "the worker outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        if worker is not None and _alive(worker):
            os.kill(worker, signal.SIGKILL)


def test_watch_parent_thread_exits_when_parent_changes(monkeypatch):
    """The non-Linux fallback: the polling thread ends the process once getppid() changes."""
    from lm_diff.crosscoder import workers

    exits = []
    monkeypatch.setattr(workers.os, "getppid", lambda: 999999)
    monkeypatch.setattr(workers.os, "_exit", lambda code: exits.append(code) or (_ for _ in ()).throw(SystemExit))
    with pytest.raises(SystemExit):
        workers._watch_parent(12345, every=0.01)
    assert exits == [1]
