"""Zero-flag discovery: after a normal (non-editable) install of the wheel, stock `lm_eval --tasks diff_demo` works.

The wheel force-includes tasks/diff_demo and tasks/diff_gemma into lm_eval/tasks/ (pyproject.toml). The test installs
the wheel with --no-deps into a separate directory T, copies the installed lm_eval package into T on top (so
T/lm_eval/tasks/diff_demo sits inside a complete lm_eval, as in a shared site-packages), and runs lm-eval's own CLI
with PYTHONPATH=T from a directory outside the checkout: no --include_path, no lm_diff wrapper.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import make_tiny_model, make_tokenizer

REPO = Path(__file__).resolve().parents[1]
DEMO_INDEX = REPO / "lm_diff" / "data" / "diff_demo" / "index.json"


def _offline_env(tmp: Path, **extra) -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp / "hf"),
               HF_DATASETS_CACHE=str(tmp / "hf" / "datasets"), TOKENIZERS_PARALLELISM="false", **extra)
    env.pop("LM_DIFF_DATA_DIR", None)
    return env


def _copy_tree(src: Path, dst: Path) -> None:
    """Hard-link when possible (fast, same filesystem), else copy; existing files in dst are kept."""

    def link_or_copy(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, dirs_exist_ok=True, copy_function=link_or_copy,
                    ignore=shutil.ignore_patterns("__pycache__"))


@pytest.mark.slow
@pytest.mark.skipif(not DEMO_INDEX.exists(), reason="diff_demo data not generated yet")
def test_wheel_install_zero_flag_lm_eval(tmp_path):
    import lm_eval

    # 1. build the wheel (no isolation: uses the venv's hatchling; no network)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "-o", str(dist), str(REPO)],
                   check=True, capture_output=True, text=True, cwd=tmp_path)
    (wheel,) = dist.glob("lm_diff-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "lm_eval/tasks/diff_demo/diff_demo.yaml" in names
    assert "lm_eval/tasks/diff_gemma/diff_gemma.yaml" in names
    assert "lm_diff/_tasks/diff_demo/diff_demo.yaml" in names
    assert "lm_diff/data/diff_demo/index.json" in names
    assert "lm_diff/data/diff_gemma/self_reference.jsonl" in names
    assert not any(n.startswith("lm_eval/") and n.endswith(".py") for n in names), "the wheel must ship YAML only"

    # 2. normal install into T, then lm_eval's own files on top
    target = tmp_path / "T"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, text=True)
    assert (target / "lm_eval" / "tasks" / "diff_demo" / "diff_demo.yaml").is_file()
    _copy_tree(Path(lm_eval.__file__).parent, target / "lm_eval")

    # 3. a tiny offline model with a chat template
    model = tmp_path / "model"
    make_tokenizer(model)
    make_tiny_model("gemma2", seed=0, out=model)

    env = _offline_env(tmp_path, PYTHONPATH=str(target))
    where = subprocess.run([sys.executable, "-c", "import lm_diff, lm_eval; print(lm_diff.__file__); print(lm_eval.__file__)"],
                           check=True, capture_output=True, text=True, cwd=tmp_path, env=env).stdout.split()
    assert all(w.startswith(str(target)) for w in where), where  # not the editable checkout

    # 4. stock lm-eval CLI, no --include_path
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args", f"pretrained={model},dtype=float32",
         "--tasks", "diff_demo", "--limit", "2", "--device", "cpu", "--batch_size", "8", "--output_path", str(out),
         "--log_samples"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (results_file,) = out.glob("*/results_*.json")
    res = json.loads(results_file.read_text())
    index = json.loads(DEMO_INDEX.read_text())
    assert set(res["configs"]) == {e["task"] for e in index}
    cats = {e["category"] for e in index}
    assert set(res["group_subtasks"]["diff_demo"]) == {f"diff_demo_{c}" for c in cats}
    for name in ["diff_demo"] + [f"diff_demo_{c}" for c in cats]:
        assert "acc,none" in res["results"][name], name
    samples = list(results_file.parent.glob("samples_*.jsonl"))
    assert len(samples) == len(index)
    assert all(len(f.read_text().splitlines()) == 2 for f in samples)
