"""lm-eval runs through the Python API, written in the same shape as ``lm_eval --output_path OUT --log_samples``.

``run_lm_eval`` writes ``results.json`` and one ``samples_<task>.jsonl`` per leaf task into ``out_dir`` (atomically: the
directory appears complete or not at all). ``find_run_files`` locates those files in either our layout or a real
lm-eval output tree (``OUT/<model_name_sanitized>/results_<date>.json`` + ``samples_<task>_<date>.jsonl``), so the join
code reads both.

Backends: ``backend`` is any lm-eval model name (``hf``, ``vllm``, ``hf-diff``, ...); ``model_args`` are passed to it
unchanged (``parallelize=True`` for accelerate multi-GPU with ``hf``). :func:`run_configured` runs one model with a
``BenchmarksConfig``; :func:`reused_runs` checks ``benchmarks.reuse`` (existing ``lm_eval --output_path`` runs).

Faults become one ``UserError`` each (docs/faults.md): a full disk or an unwritable folder while writing (nothing is
left behind), a hub id missing from the local cache while ``HF_HUB_OFFLINE`` is set, an unknown task, a task marked
``unsafe_code`` without ``benchmarks.confirm_run_unsafe_code``, a reused run without ``--log_samples`` output.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence
from unittest import mock

from huggingface_hub import try_to_load_from_cache
from lm_eval.evaluator import simple_evaluate
from lm_eval.utils import handle_non_serializable, hash_string, sanitize_list

from lm_diff.bench import suites
from lm_diff.bench.render import PromptFormat
from lm_diff.errors import UserError
from lm_diff.io import atomic_dir

log = logging.getLogger(__name__)


def _sanitize_model_name(name: str) -> str:
    # lm_eval.loggers.evaluation_tracker: "/" and ":" become "__"
    return re.sub(r"[\"<>:/|\\?*\[\]]+", "__", name)


def _sample_lines(samples: list[dict]) -> list[str]:
    """The JSONL lines lm-eval's ``EvaluationTracker.save_results_samples`` writes for one task."""
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


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_NO_WRITE = {errno.EACCES, errno.EPERM, errno.EROFS}


def write_error(exc: OSError, out_dir: Path, what: str = "the lm-eval run") -> UserError:
    """One message for an OSError while writing ``out_dir``: disk full, not writable, or the OS's own reason."""
    if exc.errno in _NO_SPACE:
        return UserError(f"no space left on the disk holding {out_dir} while writing {what}; free disk space or "
                         "write the run to another disk (--out); nothing was left behind")
    if exc.errno in _NO_WRITE:
        return UserError(f"cannot write {what} to {out_dir}: {exc.strerror or exc}; choose a writable directory "
                         "(--out) or fix its permissions; nothing was left behind")
    return UserError(f"cannot write {what} to {out_dir}: {exc.strerror or exc}; nothing was left behind")


def write_run(results: dict, out_dir: Path, *, model_name: str = "") -> Path:
    """Write a ``simple_evaluate`` result (with ``samples``) as ``results.json`` + ``samples_<task>.jsonl``, atomically.

    An ``OSError`` (disk full, unwritable folder) becomes one ``UserError`` and leaves no partial directory."""
    results = dict(results)
    samples: dict = results.pop("samples", None) or {}
    results["task_hashes"] = {
        task: hash_string("".join(s["doc_hash"] + s["prompt_hash"] + s["target_hash"] for s in rows))
        for task, rows in samples.items()
    }
    results.setdefault("model_name", model_name)
    results.setdefault("model_name_sanitized", _sanitize_model_name(model_name))
    out_dir = Path(out_dir)
    try:
        with atomic_dir(out_dir) as tmp:
            for task, rows in samples.items():
                with open(tmp / f"samples_{task}.jsonl", "w", encoding="utf-8") as fh:
                    fh.writelines(_sample_lines(rows))
            text = json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False)
            (tmp / "results.json").write_text(text, encoding="utf-8")
    except OSError as exc:
        raise write_error(exc, out_dir) from None
    return out_dir


_HUB_BACKENDS = {"hf", "hf-auto", "huggingface", "hf-diff", "vllm", "steered"}


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def check_model_available(pretrained: str, backend: str = "hf") -> None:
    """A missing local model directory, or a hub id absent from the local cache while ``HF_HUB_OFFLINE`` is set, is
    one ``UserError`` naming it (lm-eval would fail deep inside transformers after loading the tasks)."""
    if backend not in _HUB_BACKENDS or Path(pretrained).expanduser().exists():
        return
    if pretrained.startswith((".", "/", "~")) or pretrained.count("/") > 1:
        raise UserError(f"model directory {pretrained} does not exist; check models.base/models.finetuned")
    if _offline() and not isinstance(try_to_load_from_cache(pretrained, "config.json"), str):
        raise UserError(
            f"model {pretrained!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading "
            f"it; download it once with network (`hf download {pretrained}`), unset HF_HUB_OFFLINE, or point the "
            "model at a local directory"
        )


def model_arguments(pretrained: str, dtype: str, model_args: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """lm-eval ``model_args``: ``pretrained`` and ``dtype`` first, then the user's (which win, except ``pretrained``)."""
    out: dict[str, Any] = {"pretrained": str(pretrained), "dtype": dtype}
    out.update({k: v for k, v in (model_args or {}).items() if k != "pretrained"})
    return out


_UNSAFE_RE = re.compile(r"run task: (\S+) which is marked as unsafe")


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
    backend: str = "hf",
    model_args: Optional[Mapping[str, Any]] = None,
    fewshot_as_multiturn: bool = True,
    system_instruction: Optional[str] = None,
) -> Path:
    """Evaluate ``pretrained`` (a local model directory or hub id) on ``tasks`` and write the run into ``out_dir``.

    Uses ``simple_evaluate(log_samples=True)`` with ``lm_diff.bench.suites.task_manager(include_path)``; lm-eval's
    built-in tasks are indexed only when a requested task needs them. ``model`` may be an already-built lm-eval ``LM``
    (then ``pretrained``/``device``/``dtype`` only label the run). ``env_info=False`` skips lm-eval's environment
    report (``pip list``, ``git`` and torch's collect_env in subprocesses, ~0.3 s a call) for internal re-scoring runs
    such as the causal check. ``backend`` and ``model_args`` select any lm-eval model (see :func:`model_arguments`).
    The rendering settings (few-shot, chat template, ``fewshot_as_multiturn``, system prompt, few-shot seed) go to
    lm-eval as one :class:`lm_diff.bench.render.PromptFormat`, the one capture renders the items with.
    Returns ``out_dir``.
    """
    fmt = PromptFormat(num_fewshot=num_fewshot, apply_chat_template=apply_chat_template,
                       fewshot_as_multiturn=fewshot_as_multiturn, system_instruction=system_instruction,
                       fewshot_seed=seed)
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
        check_model_available(str(pretrained), backend)
        model, lm_args = backend, model_arguments(str(pretrained), dtype, model_args)
    else:
        lm_args = None
    quiet = contextlib.ExitStack()
    if not env_info:
        quiet.enter_context(mock.patch("lm_eval.evaluator.add_env_info", lambda results: None))
        quiet.enter_context(mock.patch("lm_eval.evaluator.get_git_commit_hash", lambda: None))
    with quiet, _quiet_loaded_model(), _unsafe_code_message():
        results = simple_evaluate(
            model=model,
            model_args=lm_args,
            tasks=tasks,
            batch_size=batch_size,
            device=device,
            limit=limit,
            log_samples=True,
            task_manager=tm,
            random_seed=0,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            **fmt.scoring_kwargs(),
            confirm_run_unsafe_code=confirm_run_unsafe_code,
        )
    if results is None:  # non-zero rank
        raise UserError("lm-eval returned no results (not rank 0?)")
    results["total_evaluation_time_seconds"] = str(time.perf_counter() - t0)
    write_run(results, Path(out_dir), model_name=str(pretrained))
    log.info("lm-eval run written to %s", out_dir)
    return Path(out_dir)


_LOADED_MODEL_NOTES = ("`pretrained` model kwarg is not of type `str`", "Passed an already-initialized model through")


class _DropLoadedModelNotes(logging.Filter):
    """lm-eval's HFLM warns twice per run when it is handed a loaded model, which lm_diff does on purpose (causal
    check: the model with its ablation hooks); the notes say nothing to an lm_diff user."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_LOADED_MODEL_NOTES)


@contextlib.contextmanager
def _quiet_loaded_model():
    flt, logger = _DropLoadedModelNotes(), logging.getLogger("lm_eval.models.huggingface")
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)


@contextlib.contextmanager
def _unsafe_code_message():
    """lm-eval's ValueError for a task marked unsafe_code → one UserError naming the config key."""
    try:
        yield
    except ValueError as exc:
        m = _UNSAFE_RE.search(str(exc))
        if m is None:
            raise
        raise UserError(f"task {m.group(1)} executes model-written code (unsafe_code); set "
                        "benchmarks.confirm_run_unsafe_code: true to allow it (lm_eval: --confirm_run_unsafe_code), "
                        "preferably in a sandbox") from None


def run_configured(bench: Any, pretrained: str, out_dir: Path, *, device: str, dtype: str,
                   include_path: Iterable[str | os.PathLike] = ()) -> Path:
    """:func:`run_lm_eval` with every field of a ``BenchmarksConfig`` (tasks, limit, few-shot, batch size, chat
    template, fewshot_as_multiturn, system prompt, backend, model_args, confirm_run_unsafe_code); ``include_path`` already resolved by the caller."""
    return run_lm_eval(
        pretrained, bench.tasks, out_dir, limit=bench.limit, num_fewshot=bench.num_fewshot,
        batch_size=bench.batch_size, apply_chat_template=bench.apply_chat_template, include_path=include_path,
        device=device, dtype=dtype, confirm_run_unsafe_code=bench.confirm_run_unsafe_code, backend=bench.model,
        model_args=bench.model_args, fewshot_as_multiturn=bench.fewshot_as_multiturn,
        system_instruction=bench.system_instruction,
    )


def reused_runs(reuse: Mapping[str, str], resolve=Path) -> dict[str, Path]:
    """``benchmarks.reuse`` checked: ``{role: run path}`` for existing lm-eval runs with ``--log_samples`` output.

    ``resolve`` maps a config value to a path (``RunConfig.resolve_path``). Each problem is one ``UserError`` naming
    the key."""
    out: dict[str, Path] = {}
    for role in ("A", "B"):
        if role not in reuse:
            raise UserError(f"benchmarks.reuse.{role} is missing; give both A (base) and B (fine-tune) run directories")
        path = Path(resolve(reuse[role]))
        try:
            results, samples = find_run_files(path)
        except UserError as exc:
            raise UserError(f"benchmarks.reuse.{role}: {exc}") from None
        if not samples:
            raise UserError(f"benchmarks.reuse.{role}: {results} has no samples_<task>_<date>.jsonl next to it; rerun "
                            "lm_eval with --log_samples (lm_diff pairs the two models document by document)")
        out[role] = path
    return out


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
    try:
        data = json.loads(results.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{results}: not valid JSON ({exc.msg} at line {exc.lineno}); rerun lm_eval to rewrite it") from None
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
