"""lm_eval_hook: the .pth-installed finder wraps lm-eval's TaskManager so its built-in index also holds lm_diff's suites.

Fast checks in a fresh interpreter (the hook must be installed before lm-eval is imported); the install-level tests
with real wheels and venvs are in test_wheel_install.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

from lm_diff.bench import lm_eval_hook
from lm_diff.bench.suites import tasks_dir

REPO = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, sys
import lm_diff.bench.lm_eval_hook as h
h.install()
h.install()  # idempotent
from lm_eval.tasks import manager
seen = []
manager.TaskIndex.build = lambda self, paths: seen.append([str(p) for p in paths]) or {}
manager.TaskManager()                                     # what `lm_eval run/ls` builds
manager.TaskManager(include_path="/user/tasks")           # --include_path: ours first, the user's overrides it
manager.TaskManager(None, ["/a", "/b"], True)             # positional arguments
manager.TaskManager(include_defaults=False, include_path="/only")  # explicit opt-out of the defaults: untouched
print(json.dumps({"seen": seen, "loader": type(manager.__loader__).__name__, "file": manager.__file__,
                  "wrapped": getattr(getattr(manager.TaskManager.__init__, "__wrapped__", None), "__qualname__", None)}))
"""


def _probe(**env) -> dict:
    e = dict(os.environ, **env)
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=REPO, env=e, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_hook_adds_our_tasks_after_builtins_before_user_paths():
    r = _probe()
    builtins, ours = r["seen"][0][0], str(tasks_dir())
    assert builtins.endswith(os.path.join("lm_eval", "tasks"))
    assert r["seen"] == [[builtins, ours], [builtins, ours, "/user/tasks"], [builtins, ours, "/a", "/b"], ["/only"]]
    assert r["loader"] == "_PatchingLoader" and r["wrapped"] == "TaskManager.__init__"


def test_hook_can_be_turned_off():
    r = _probe(**{lm_eval_hook.ENV: "0"})
    assert r["seen"][0] == [r["seen"][0][0]] and r["loader"] != "_PatchingLoader" and r["wrapped"] is None


def test_patch_leaves_unknown_shapes_alone_and_dedupes():
    class TM:
        def __init__(self, paths=None):
            self.paths = paths

    assert not lm_eval_hook.patch_task_manager(types.SimpleNamespace(TaskManager=TM))
    assert lm_eval_hook.patch_task_manager(types.SimpleNamespace(TaskManager=None)) is False
    ours = str(tasks_dir())
    assert lm_eval_hook._with_our_tasks([ours + os.sep, "/x"], ours) == [ours + os.sep, "/x"]
    assert lm_eval_hook._with_our_tasks(None, ours) == [ours]


def test_pth_file_runs_install():
    line = (REPO / "lm_diff" / "bench" / "lm_diff_lm_eval_tasks.pth").read_text().strip()
    assert line.startswith("import ") and "\n" not in line and "install()" in line
