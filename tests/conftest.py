"""Test-suite set-up: fully offline, caches in temporary folders, shared fixtures."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# Before anything imports transformers / datasets / lm_eval.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="lm_diff_tests_"))
atexit.register(shutil.rmtree, _SESSION_TMP, ignore_errors=True)
if not os.environ.get("HF_HOME") or not os.environ["HF_HOME"].startswith(tempfile.gettempdir()):
    os.environ["HF_HOME"] = str(_SESSION_TMP / "hf_home")
os.environ["HF_DATASETS_CACHE"] = str(Path(os.environ["HF_HOME"]) / "datasets")
# Organisms are cached by content hash; tests build them once per session unless LM_DIFF_CACHE points at a cache.
os.environ.setdefault("LM_DIFF_CACHE", str(_SESSION_TMP / "lm_diff_cache"))

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_organisms() -> Path:
    """The tiny model organisms (base, finetuned, null + organism.json), built once per test session."""
    from lm_diff.organisms import build

    return build("tiny", progress=False)


@pytest.fixture(scope="session")
def tiny_natural() -> Path:
    """The tiny natural-family organisms (Qwen2; base, finetuned, null + organism.json), built and checked once per
    test session (the build raises when the planted shape does not show)."""
    from lm_diff.organisms import natural

    return natural.build("tiny", progress_=False)
