"""Where lm_diff's task YAML and task data live (shared by :mod:`lm_diff.bench.suites` and
:mod:`lm_diff.bench.demo_yamls`)."""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

from lm_diff.errors import UserError

PKG_DIR = Path(__file__).resolve().parent.parent
"""The installed ``lm_diff`` package directory."""
DATA_ENV = "LM_DIFF_DATA_DIR"
"""Environment variable: a directory that replaces ``lm_diff/data`` as the root of ``data_file`` (development, tests)."""
SUITES = ("diff_demo", "diff_natural", "diff_gemma", "diff_leaderboard", "diff_probes", "diff_demo_probes",
          "diff_natural_probes")
"""The task suites lm_diff ships."""


def tasks_dir() -> Path:
    """The directory holding lm_diff's task YAML: ``lm_diff/_tasks`` in an installed wheel, else the repo's ``tasks/``."""
    inside = PKG_DIR / "_tasks"
    if inside.is_dir():
        return inside
    repo = PKG_DIR.parent / "tasks"
    if repo.is_dir():
        return repo
    raise UserError(f"lm_diff's task YAML is missing (looked in {inside} and {repo}); reinstall lm_diff")


def data_root() -> Path:
    """Root of ``dataset_kwargs.data_file`` paths: ``$LM_DIFF_DATA_DIR`` if set, else the package's ``lm_diff/data``."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    return Path(str(importlib.resources.files("lm_diff") / "data"))


def resolve_data_file(data_file: str | os.PathLike) -> Path:
    """``data_file`` under :func:`data_root` (or as given when absolute); a missing file is a UserError."""
    p = Path(data_file)
    if not p.is_absolute():
        p = data_root() / p
    if not p.is_file():
        raise UserError(
            f"task data file {p} not found; reinstall lm_diff, or set {DATA_ENV} to a directory holding {data_file}"
        )
    return p
