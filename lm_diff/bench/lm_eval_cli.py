"""``lm-diff eval ...``: lm-eval's own CLI with lm_diff's tasks on the include path and the ``hf-diff`` model registered.

All arguments go to lm-eval unchanged (``run`` is implied as in ``lm_eval``), except that lm_diff's task directory is
added to the task search path: as ``--include_path <dir>`` when the user gave none, or prepended to the user's own
``--include_path`` (lm-eval's flag takes a single directory) by widening ``TaskManager``'s include path in-process. This
works the same in editable and wheel installs, because it uses :func:`lm_diff.bench.suites.tasks_dir`.

``lm-diff eval --model hf --model_args pretrained=... --tasks diff_gemma`` is the documented form (the CLI's ``eval``
parser hands every argument, flags included, to :func:`main`). ``lm-diff eval --help`` prints lm-eval's help.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path
from typing import Iterator, Optional, Sequence

from lm_diff.bench.suites import quiet_own_overrides, tasks_dir

SUBCOMMANDS = ("run", "ls", "validate")


def _has_flag(argv: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def build_argv(argv: Sequence[str], tasks_dir: str) -> list[str]:
    """lm-eval argv with ``run`` made explicit and ``--include_path tasks_dir`` added when the user gave none."""
    argv = list(argv)
    if not argv or argv[0] in {"-h", "--help"}:
        return argv
    if argv[0] not in SUBCOMMANDS:
        argv.insert(0, "run")
    if len(argv) == 1:  # bare "run": lm-eval prints the run help
        return argv
    if not _has_flag(argv, "--include_path"):
        argv += ["--include_path", tasks_dir]
    return argv


@contextlib.contextmanager
def include_tasks_dir(tasks_dir: str) -> Iterator[None]:
    """Inside the block, every ``TaskManager`` also searches ``tasks_dir`` (first, so user paths override it)."""
    from lm_eval.tasks import TaskManager  # noqa: PLC0415 - ~2 s; lm_diff.cli imports this module at every start


    original = TaskManager.__init__

    @functools.wraps(original)
    def __init__(self, *args, include_path=None, **kwargs):
        paths = [] if include_path is None else list(include_path) if isinstance(include_path, (list, tuple)) else [include_path]
        resolved = {str(Path(p).resolve()) for p in paths}
        if str(Path(tasks_dir).resolve()) not in resolved:
            paths.insert(0, tasks_dir)
        original(self, *args, include_path=paths, **kwargs)

    TaskManager.__init__ = __init__
    try:
        yield
    finally:
        TaskManager.__init__ = original


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run lm-eval's CLI on ``argv`` (default ``sys.argv[1:]``); returns its exit code (``--help`` exits, as argparse)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    tdir = str(tasks_dir())
    full = build_argv(argv, tdir)
    if full and full[0] == "run" and len(full) > 1:
        # registers --model hf-diff; imports torch and transformers (seconds), needed only to run
        import lm_diff.bench.lm_eval_plugin  # noqa: F401, PLC0415
    from lm_eval.__main__ import cli_evaluate  # noqa: PLC0415 - ~2 s; lm_diff.cli imports this module at every start

    quiet_own_overrides()
    saved = sys.argv
    sys.argv = ["lm-eval", *full]
    asked_help = bool(full) and full[0] in {"-h", "--help"}
    if asked_help:
        print("usage: lm-diff eval [LM_EVAL_ARGUMENTS ...]  (lm-eval's CLI with lm_diff's tasks and --model hf-diff)\n")
    try:
        with include_tasks_dir(tdir):
            cli_evaluate()
    except SystemExit as exc:
        if asked_help:
            raise
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
