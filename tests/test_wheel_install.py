"""Zero-flag discovery after installing the wheel, next to lm-eval installed from a wheel or editable from a checkout.

Offline: the lm_diff wheel is built without isolation; lm-eval's wheel and its "checkout" are rebuilt from the
installed lm_eval package's own files (its dist-info RECORD). Each variant gets a fresh venv (``uv venv``) whose only
view of the other dependencies (torch, transformers, ...) is a directory of symlinks to the dev venv's site-packages
without lm_eval/lm_diff and without .pth files, so lm-eval and lm_diff exist in it only as installed here. Checks:

- wheel + wheel: stock ``python -m lm_eval run --tasks diff_demo`` runs (no --include_path, no wrapper); uninstalling
  lm-eval leaves no ``lm_eval/`` folder behind and lm_diff still imports; nothing prints at interpreter start.
- editable lm-eval (setuptools, from a checkout) + lm_diff wheel: ``lm_eval`` still imports from the checkout (the old
  force-include made it an empty namespace package), ``lm_eval ls groups`` lists diff_demo and diff_gemma;
  uninstalling lm_diff leaves lm-eval working; uninstalling lm-eval leaves the checkout intact.
"""

from __future__ import annotations

import base64
import csv
import hashlib
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
PTH = "lm_diff_lm_eval_tasks.pth"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not DEMO_INDEX.exists(), reason="diff_demo data not generated yet")]


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert p.returncode == 0, f"{cmd}\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    return p


def _uv() -> list:
    return [sys.executable, "-m", "uv"]


def _site() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).resolve().parents[1]


def _lm_eval_files() -> list[str]:
    """Paths (relative to site-packages) of the installed lm-eval, from its RECORD (no scripts, no caches)."""
    site = _site()
    (record,) = site.glob("lm_eval-*.dist-info/RECORD")
    rows = [r[0] for r in csv.reader(record.read_text().splitlines()) if r]
    return [r for r in rows if not r.startswith("..") and "__pycache__" not in r and (site / r).is_file()
            and not r.endswith(("/RECORD", "/INSTALLER", "/REQUESTED", "/direct_url.json"))]


def _lm_eval_wheel(out: Path) -> Path:
    site, files = _site(), _lm_eval_files()
    dist_info = next(f.split("/")[0] for f in files if ".dist-info/" in f)
    wheel = out / f"{dist_info.removesuffix('.dist-info')}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as z:
        for f in files:
            data = (site / f).read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{f},sha256={digest},{len(data)}")
            z.writestr(f, data)
        z.writestr(f"{dist_info}/RECORD", "\n".join(record + [f"{dist_info}/RECORD,,"]) + "\n")
    return wheel


def _lm_eval_checkout(out: Path) -> Path:
    site = _site()
    for f in _lm_eval_files():
        if f.startswith("lm_eval/"):
            (out / f).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(site / f, out / f)
            except OSError:
                shutil.copy2(site / f, out / f)
    (out / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "lm_eval"\nversion = "0.4.13"\n\n'
        '[tool.setuptools.packages.find]\ninclude = ["lm_eval*"]\n\n'
        '[tool.setuptools.package-data]\n"*" = ["**/*.yaml", "**/*.json", "**/*.jinja", "**/*.txt"]\n')
    return out


def _deps_dir(out: Path) -> Path:
    """Symlinks to the dev venv's packages. The folder is named site-packages because dill (datasets' fingerprint
    hashing) pickles modules by reference only when their path says so, and lm-eval's task loading relies on that."""
    out.mkdir(parents=True)
    for entry in _site().iterdir():
        n = entry.name
        if n.startswith(("lm_eval", "lm_diff", "_editable_impl", "__editable__", "__pycache__")) or n.endswith(".pth"):
            continue
        (out / n).symlink_to(entry)
    return out


def _venv(root: Path, deps: Path) -> tuple[Path, Path]:
    _run([*_uv(), "venv", "--quiet", "--python", sys.executable, root])
    py = root / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "00_lm_diff_test_deps.pth").write_text(str(deps) + "\n")
    return py, site


def _install(py: Path, *args) -> None:
    _run([*_uv(), "pip", "install", "--quiet", "--python", py, "--offline", "--no-index", "--no-deps", *args])


def _uninstall(py: Path, name: str) -> None:
    _run([*_uv(), "pip", "uninstall", "--quiet", "--python", py, name])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheels")
    dist = root / "dist"
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "-o", dist, REPO], cwd=root)
    (wheel,) = dist.glob("lm_diff-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert PTH in names and "lm_diff/bench/lm_eval_hook.py" in names
    assert not any(n.startswith("lm_eval/") for n in names), "the wheel must not write into lm_eval/"
    assert "lm_diff/_tasks/diff_demo/diff_demo.yaml" in names and "lm_diff/data/diff_demo/index.json" in names
    return {"root": root, "lm_diff": wheel, "lm_eval": _lm_eval_wheel(dist), "deps": _deps_dir(root / "deps" / "site-packages")}


def _env(tmp: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LM_DIFF_DATA_DIR", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp / "hf"),
               HF_DATASETS_CACHE=str(tmp / "hf" / "datasets"), TOKENIZERS_PARALLELISM="false", **extra)
    return env


WHERE = "import lm_diff, lm_eval, lm_eval.tasks; print(lm_diff.__file__); print(lm_eval.__file__)"


def test_wheel_lm_eval_and_wheel_lm_diff(built, tmp_path):
    py, site = _venv(tmp_path / "venv", built["deps"])
    _install(py, built["lm_eval"], built["lm_diff"])
    env = _env(tmp_path)
    where = _run([py, "-c", WHERE], cwd=tmp_path, env=env).stdout.split()
    assert all(w.startswith(str(site)) for w in where), where
    assert (site / PTH).is_file() and not (site / "lm_eval" / "tasks" / "diff_demo").exists()

    model = tmp_path / "model"
    make_tokenizer(model)
    make_tiny_model("gemma2", seed=0, out=model)
    out = tmp_path / "out"
    _run([py, "-m", "lm_eval", "run", "--model", "hf", "--model_args", f"pretrained={model},dtype=float32",
          "--tasks", "diff_demo", "--limit", "2", "--device", "cpu", "--batch_size", "8", "--output_path", out,
          "--log_samples"], cwd=tmp_path, env=env, timeout=600)
    (results_file,) = out.glob("*/results_*.json")
    res = json.loads(results_file.read_text())
    index = json.loads(DEMO_INDEX.read_text())
    assert set(res["configs"]) == {e["task"] for e in index}
    assert set(res["group_subtasks"]["diff_demo"]) == {f"diff_demo_{c}" for c in {e["category"] for e in index}}
    assert all(len(f.read_text().splitlines()) == 2 for f in results_file.parent.glob("samples_*.jsonl"))

    _uninstall(py, "lm_eval")
    assert not (site / "lm_eval").exists(), "uninstalling lm-eval must leave no orphan folder"
    p = _run([py, "-c", "from lm_diff.bench.suites import tasks_dir; print(tasks_dir())"], cwd=tmp_path, env=env)
    assert p.stderr == "" and Path(p.stdout.strip()).is_dir()


def test_editable_lm_eval_checkout_and_wheel_lm_diff(built, tmp_path):
    py, site = _venv(tmp_path / "venv", built["deps"])
    checkout = _lm_eval_checkout(tmp_path / "lm-evaluation-harness")
    _install(py, "--no-build-isolation", "-e", checkout)
    _install(py, built["lm_diff"])
    env = _env(tmp_path)
    lm_diff_file, lm_eval_file = _run([py, "-c", WHERE], cwd=tmp_path, env=env).stdout.split()
    assert lm_eval_file == str(checkout / "lm_eval" / "__init__.py") and lm_diff_file.startswith(str(site))

    groups = _run([py, "-m", "lm_eval", "ls", "groups"], cwd=tmp_path, env=env, timeout=600).stdout
    assert "diff_demo" in groups and "diff_gemma" in groups

    _uninstall(py, "lm_diff")
    assert not (site / PTH).exists() and not (site / "lm_diff").exists()
    probe = "from lm_eval.tasks import TaskManager; print(hasattr(TaskManager.__init__, '__wrapped__'))"
    assert _run([py, "-c", probe], cwd=tmp_path, env=env).stdout.strip() == "False"

    _install(py, built["lm_diff"])
    _uninstall(py, "lm_eval")
    assert (checkout / "lm_eval" / "__init__.py").is_file() and not (site / "lm_eval").exists()
    p = _run([py, "-c", "import lm_diff.bench.lm_eval_hook"], cwd=tmp_path, env=env)
    assert p.stderr == ""
