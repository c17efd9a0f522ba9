"""lm-eval runs through the Python API, written in the same shape as ``lm_eval --output_path OUT --log_samples``.

``run_lm_eval`` writes ``results.json`` and one ``samples_<task>.jsonl`` per leaf task into ``out_dir`` (atomically: the
directory appears complete or not at all). ``find_run_files`` locates those files in either our layout or a real
lm-eval output tree (``OUT/<model_name_sanitized>/results_<date>.json`` + ``samples_<task>_<date>.jsonl``), so the join
code reads both.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Iterable, Optional, Sequence

from lm_diff.errors import UserError

log = logging.getLogger(__name__)


def _sanitize_model_name(name: str) -> str:
    # lm_eval.loggers.evaluation_tracker: "/" and ":" become "__"
    return re.sub(r"[\"<>:/|\\?*\[\]]+", "__", name)


def _sample_lines(samples: list[dict]) -> list[str]:
    """The JSONL lines lm-eval's ``EvaluationTracker.save_results_samples`` writes for one task."""
    from lm_eval.utils import handle_non_serializable, sanitize_list

    lines = []
    for sample in samples:
        sample = dict(sample)
        arguments = {}
        for i, arg in enumerate(sample["arguments"]):
            arguments[f"gen_args_{i}"] = {f"arg_{j}": tmp for j, tmp in enumerate(arg)}
        sample["resps"] = sanitize_list(sample["resps"])
        sample["filtered_resps"] = sanitize_list(sample["filtered_resps"])
        sample["arguments"] = arguments
        sample["target"] = str(sample["target"])
        lines.append(json.dumps(sample, default=handle_non_serializable, ensure_ascii=False) + "\n")
    return lines


def write_run(results: dict, out_dir: Path, *, model_name: str = "") -> Path:
    """Write a ``simple_evaluate`` result (with ``samples``) as ``results.json`` + ``samples_<task>.jsonl``, atomically."""
    from lm_eval.utils import handle_non_serializable, hash_string

    from lm_diff.io import atomic_dir

    results = dict(results)
    samples: dict = results.pop("samples", None) or {}
    results["task_hashes"] = {
        task: hash_string("".join(s["doc_hash"] + s["prompt_hash"] + s["target_hash"] for s in rows))
        for task, rows in samples.items()
    }
    results.setdefault("model_name", model_name)
    results.setdefault("model_name_sanitized", _sanitize_model_name(model_name))
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        for task, rows in samples.items():
            with open(tmp / f"samples_{task}.jsonl", "w", encoding="utf-8") as fh:
                fh.writelines(_sample_lines(rows))
        text = json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False)
        (tmp / "results.json").write_text(text, encoding="utf-8")
    return out_dir


def run_lm_eval(
    pretrained: str,
    tasks: Sequence[str],
    out_dir: Path,
    *,
    limit: Optional[int] = None,
    num_fewshot: Optional[int] = None,
    batch_size: int = 16,
    apply_chat_template: bool = False,
    include_path: Iterable[str | os.PathLike] = (),
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 1234,
    model=None,
    confirm_run_unsafe_code: bool = False,
    env_info: bool = True,
) -> Path:
    """Evaluate ``pretrained`` (a local model directory or hub id) on ``tasks`` and write the run into ``out_dir``.

    Uses ``simple_evaluate(log_samples=True)`` with ``lm_diff.bench.suites.task_manager(include_path)``; lm-eval's
    built-in tasks are indexed only when a requested task needs them. ``model`` may be an already-built lm-eval ``LM``
    (then ``pretrained``/``device``/``dtype`` only label the run). ``env_info=False`` skips lm-eval's environment
    report (``pip list``, ``git`` and torch's collect_env in subprocesses, ~0.3 s a call) for internal re-scoring runs
    such as the causal check. Returns ``out_dir``.
    """
    import contextlib
    from unittest import mock

    from lm_eval.evaluator import simple_evaluate

    from lm_diff.bench import suites

    tasks = list(tasks)
    if not tasks:
        raise UserError("no lm-eval tasks given; set benchmarks.tasks")
    extra = [str(p) for p in include_path]
    defaults = suites.needs_defaults(tasks, extra)
    tm = suites.task_manager(extra, include_defaults=defaults)
    unknown = [t for t in tasks if t not in tm.task_index and not Path(t).is_file()]
    if unknown:
        raise UserError(
            f"unknown lm-eval task(s) {', '.join(unknown)}; check benchmarks.tasks (list them with `lm-eval ls tasks`)"
        )
    t0 = time.perf_counter()
    if model is None:
        model, model_args = "hf", {"pretrained": str(pretrained), "dtype": dtype}
    else:
        model_args = None
    quiet = contextlib.ExitStack()
    if not env_info:
        quiet.enter_context(mock.patch("lm_eval.evaluator.add_env_info", lambda results: None))
        quiet.enter_context(mock.patch("lm_eval.evaluator.get_git_commit_hash", lambda: None))
    with quiet:
        results = simple_evaluate(
            model=model,
            model_args=model_args,
            tasks=tasks,
            num_fewshot=num_fewshot,
            batch_size=batch_size,
            device=device,
            limit=limit,
            log_samples=True,
            apply_chat_template=apply_chat_template,
            task_manager=tm,
            random_seed=0,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
            confirm_run_unsafe_code=confirm_run_unsafe_code,
        )
    if results is None:  # non-zero rank
        raise UserError("lm-eval returned no results (not rank 0?)")
    results["total_evaluation_time_seconds"] = str(time.perf_counter() - t0)
    write_run(results, Path(out_dir), model_name=str(pretrained))
    log.info("lm-eval run written to %s", out_dir)
    return Path(out_dir)


def find_run_files(path: str | os.PathLike) -> tuple[Path, dict[str, Path]]:
    """``(results_json, {task: samples_jsonl})`` for our ``out_dir`` or a real ``lm_eval --output_path`` tree.

    ``path`` may be the directory holding the results file, its parent (lm-eval's ``--output_path``, which holds one
    ``<model_name_sanitized>/`` folder), or the results JSON itself. With several lm-eval results files the newest
    wins and only its samples (same date suffix) are returned. Task names come from the results' ``configs``.
    """
    p = Path(path)
    if p.is_file():
        results, folder = p, p.parent
    else:
        if not p.is_dir():
            raise UserError(f"{p}: no such lm-eval run directory")
        cands = sorted(p.glob("results*.json"))
        if not cands:
            cands = sorted(p.glob("*/results*.json"))
            if len({c.parent for c in cands}) > 1:
                raise UserError(f"{p} holds runs of several models ({', '.join(sorted({c.parent.name for c in cands}))}); "
                                "pass one of its model folders")
        if not cands:
            raise UserError(f"{p}: no results*.json found; is this an lm-eval --output_path or lm_diff eval directory?")
        results = max(cands, key=lambda c: (c.name != "results.json", c.name))  # lm-eval names sort by date
        folder = results.parent
    data = json.loads(results.read_text(encoding="utf-8"))
    tasks = list((data.get("configs") or {}).keys())
    m = re.match(r"results_(.+)\.json$", results.name)
    suffix = f"_{m.group(1)}.jsonl" if m else ".jsonl"
    out: dict[str, Path] = {}
    for f in sorted(folder.glob("samples_*.jsonl")):
        if not f.name.endswith(suffix):
            continue
        task = f.name[len("samples_") : -len(suffix)]
        if task in tasks:
            out[task] = f
    return results, out
