"""Zero-flag discovery: stock ``lm_eval --tasks diff_gemma`` and ``lm_eval ls groups`` find lm_diff's suites.

lm-eval 0.4.13 reads no task plugins (no entry points, no environment variable; docs/lm_eval.md). The wheel installs a
one-line ``lm_diff_lm_eval_tasks.pth`` into site-packages that calls :func:`install` at interpreter start. It puts a
finder on ``sys.meta_path`` that waits for ``lm_eval.tasks.manager`` to be imported (nothing else is looked at or
imported before that), then wraps ``TaskManager.__init__``: whenever lm-eval's built-in tasks are indexed
(``include_defaults=True``, what the CLI and ``simple_evaluate`` use), lm_diff's task directory
(:func:`lm_diff.bench.suites.tasks_dir`) is searched right after them and before the user's ``--include_path``, which
therefore still overrides it. ``TaskManager(include_defaults=False)`` is left alone.

Why this and not files in ``lm_eval/tasks/``: nothing is written into another package's folder, so lm-eval installed
from a wheel, editable, or from a checkout keeps working, uninstalling lm-eval leaves no orphan folders, and
uninstalling lm_diff removes the ``.pth`` (it is in the wheel's RECORD). Set ``LM_DIFF_LM_EVAL_HOOK=0`` to turn it off.
The ``lm_eval.tasks`` entry point in pyproject.toml covers lm-eval releases that read entry points.

Start-up cost: importing this module and the two package ``__init__`` files above it (a docstring and a version
string); it imports only ``os`` and ``sys`` (already loaded at start-up), not ``typing``, ``re`` or anything of
lm_diff, so a bare ``python -c pass`` pays ≈ 1 ms instead of the ≈ 20-100 ms (on a loaded machine) that importing
``typing`` cost; plus one extra finder consulted per first import.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing at every interpreter start costs tens of milliseconds
    from typing import Any, Optional

TARGET = "lm_eval.tasks.manager"
"""The module whose ``TaskManager`` is wrapped."""
ENV = "LM_DIFF_LM_EVAL_HOOK"
"""Environment variable: ``0`` turns the hook off."""
_MARK = "_lm_diff_tasks_hook"


def _our_tasks_dir() -> Optional[str]:
    try:
        from lm_diff.bench.suites import tasks_dir  # noqa: PLC0415 - only once lm-eval builds a TaskManager, never at start-up
    except ImportError:
        return None
    from lm_diff.errors import UserError  # noqa: PLC0415 - kept out of interpreter start-up

    try:
        return str(tasks_dir())
    except UserError:  # lm_diff's YAML is missing: lm-eval must keep working without our tasks
        return None


def _with_our_tasks(include_path: Any, ours: str) -> list:
    paths = [] if include_path is None else list(include_path) if isinstance(include_path, (list, tuple)) else [include_path]
    real = os.path.realpath(ours)
    if any(os.path.realpath(os.fspath(p)) == real for p in paths):
        return paths
    return [ours, *paths]


def patch_task_manager(module: Any) -> bool:
    """Wrap ``module.TaskManager.__init__`` (idempotent). Returns False when the class is not the expected shape."""
    cls = getattr(module, "TaskManager", None)
    init = getattr(cls, "__init__", None)
    code = getattr(init, "__code__", None)
    if cls is None or code is None or getattr(init, _MARK, False):
        return False
    names = code.co_varnames[1:code.co_argcount]
    if "include_path" not in names or "include_defaults" not in names:
        return False  # another lm-eval API: leave it alone

    def __init__(self, *args, **kwargs):
        bound = dict(zip(names, args))
        bound.update(kwargs)
        if bound.get("include_defaults", True):
            ours = _our_tasks_dir()
            if ours is not None:
                bound["include_path"] = _with_our_tasks(bound.get("include_path"), ours)
        extra = args[len(names):]
        return init(self, *extra, **bound) if extra else init(self, **bound)

    for attr in ("__doc__", "__name__", "__qualname__", "__module__", "__wrapped__"):
        if hasattr(init, attr):
            setattr(__init__, attr, getattr(init, attr))
    __init__.__wrapped__ = init
    setattr(__init__, _MARK, True)
    cls.__init__ = __init__
    return True


class _PatchingLoader:
    """Delegates to the real loader; patches the module once it has executed."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:
        self._inner.exec_module(module)
        patch_task_manager(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_resource_reader, ... for tracebacks and resources
        return getattr(self._inner, name)


class TaskManagerFinder:
    """A ``sys.meta_path`` finder that only answers for :data:`TARGET` (with the real spec and a patching loader)."""

    def find_spec(self, name: str, path=None, target=None):
        if name != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _PatchingLoader(spec.loader)
        return spec


def install() -> None:
    """Called by the ``.pth`` file at interpreter start: add the finder once (or patch now if lm-eval is loaded)."""
    if os.environ.get(ENV, "1").strip().lower() in {"0", "false", "no", "off"}:
        return
    if TARGET in sys.modules:
        patch_task_manager(sys.modules[TARGET])
        return
    if not any(isinstance(f, TaskManagerFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, TaskManagerFinder())
