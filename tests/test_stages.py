"""Stage bookkeeping without models: the output-folder lock, the report set written as one unit, the artifact
vocabulary (lm_diff.schema)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from lm_diff.errors import UserError
from lm_diff.plugins import manager as plugins
from lm_diff.plugins.hookspecs import hookimpl
from lm_diff.report.build import build_report
from lm_diff.report.writers import write_report
from lm_diff.run.stages import HOLDER, OutputLock, Stages
from lm_diff.schema import read_table, write_table

REPO = Path(__file__).resolve().parent.parent


def _hold_lock(out: Path) -> subprocess.Popen:
    """A second process holding ``out``'s lock until its stdin closes."""
    code = textwrap.dedent(f"""
        import sys
        from lm_diff.run.stages import OutputLock
        with OutputLock({str(out)!r}):
            print("locked", flush=True)
            sys.stdin.read()
    """)
    p = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_run_on_the_same_output_is_refused_naming_the_holder(tmp_path):
    holder = _hold_lock(tmp_path)
    try:
        started = json.loads((tmp_path / HOLDER).read_text())["started"]
        with pytest.raises(UserError, match=re.escape(f"in use by another lm-diff run (PID {holder.pid}, started {started})")):
            OutputLock(tmp_path).acquire()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    with OutputLock(tmp_path) as lock:  # released with its holder
        assert lock.took_over is None
        assert json.loads((tmp_path / HOLDER).read_text())["pid"] == os.getpid()
    assert not (tmp_path / HOLDER).exists()


def test_torchrun_ranks_share_the_lock_of_rank_0(tmp_path, monkeypatch):
    """`torchrun ... lm-diff train` starts one process per rank on the same folder: rank 0 holds the lock, the other
    ranks are not refused by it; an unrelated second run still is."""
    holder = _hold_lock(tmp_path)
    try:
        monkeypatch.setenv("RANK", "1")
        with OutputLock(tmp_path):
            pass
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(UserError, match="in use by another lm-diff run"):
            OutputLock(tmp_path).acquire()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_stale_lock_of_a_killed_run_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # that process has exited: its PID is gone
    (tmp_path / HOLDER).write_text(json.dumps({"pid": pid, "started": "2026-01-01T00:00:00+00:00"}))
    (tmp_path / ".lm_diff.lock").write_text("")
    with OutputLock(tmp_path) as lock:
        assert lock.took_over == {"pid": pid, "started": "2026-01-01T00:00:00+00:00"}
        assert json.loads((tmp_path / HOLDER).read_text())["pid"] == os.getpid()


def test_stage_runs_once_and_is_keyed_on_its_inputs(tmp_path):
    stages = Stages(tmp_path)
    calls = []

    def fn(d: Path) -> dict:
        calls.append(d)
        return {"n": 1}

    d1, s1 = stages.run("x", {"a": 1}, fn)
    d2, s2 = stages.run("x", {"a": 1}, fn)
    d3, _ = stages.run("x", {"a": 2}, fn)
    assert d1 == d2 and d3 != d1 and len(calls) == 2 and s2["n"] == 1
    assert json.loads((d1 / "KEY.json").read_text()) == {"a": 1}


class _Failing:
    """A writer plugin that fails after the json and md writers have written their files."""

    @hookimpl
    def lm_diff_report_writers(self):
        def boom(report, out_dir):
            raise RuntimeError("disk full")

        return {"boom": boom}


def test_report_set_is_written_all_or_none(tmp_path):
    rep = build_report(meta={"title": "first"}, sections=False)
    write_report(rep, tmp_path, ["json", "md", "html"])
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}
    plugins.reset_plugin_manager()
    plugins.get_plugin_manager().register(_Failing(), name="test_failing_writer")
    try:
        with pytest.raises(RuntimeError, match="disk full"):
            write_report(build_report(meta={"title": "second"}, sections=False), tmp_path, ["json", "md", "boom", "html"])
    finally:
        plugins.reset_plugin_manager()
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before  # nothing replaced, no temp left
    # a new json without html: the old html does not stay beside it
    paths = write_report(build_report(meta={"title": "third"}, sections=False), tmp_path, ["json", "md"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md"]
    assert json.loads(paths["json"].read_text())["title"] == "third"


def test_tables_are_checked_on_write_and_read(tmp_path):
    df = pd.DataFrame({"task": ["t"], "doc_id": [0], "latent": [3], "set": ["S"], "act": [1.5]})
    p = write_table(df, tmp_path, "doc_activations")
    assert p.name == "doc_activations.parquet" and read_table(tmp_path, "doc_activations").equals(df)
    with pytest.raises(UserError, match=r"lacks column\(s\) act"):
        write_table(df.drop(columns=["act"]), tmp_path, "doc_activations")
    df.rename(columns={"act": "max_act"}).to_parquet(p)
    with pytest.raises(UserError, match=r"doc_activations\.parquet: the doc_activations table lacks column\(s\) act"):
        read_table(tmp_path, "doc_activations")
    with pytest.raises(UserError, match="shift.parquet: missing"):
        read_table(tmp_path, "shift")
    assert read_table(tmp_path, "shift", required=False) is None
