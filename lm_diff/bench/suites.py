"""lm-eval task suites shipped with lm_diff (``diff_demo``, ``diff_natural``, ``diff_gemma``, ``diff_leaderboard``,
``diff_probes``, and the organisms' probe groups ``diff_demo_probes`` and ``diff_natural_probes``) and the helpers
their YAML points at.

Layout: ``tasks/<suite>/`` holds code-free YAML. The top group (e.g. ``diff_demo``) lists one subgroup per capability
category (``diff_demo_<category>``, own file, the category declared once in its ``metadata.category``), which lists the
leaf tasks. Data is package data under ``lm_diff/data/`` loaded through ``custom_dataset: !function
lm_diff.bench.suites.load_split`` (the perplexity probes: ``load_probe``, :mod:`lm_diff.bench.probes`); generation tasks are scored by ``process_results: !function lm_diff.bench.suites.process_generation``.

The wheel ships the YAML in ``lm_diff/_tasks`` (what :func:`tasks_dir` returns; in a source checkout it is the repo's
``tasks/``); a stock ``lm_eval --tasks diff_demo`` finds it through the ``.pth`` hook of ``lm_diff.bench.lm_eval_hook``.

``python -m lm_diff.bench.suites write-yamls [--suite diff_natural] [--check]`` regenerates ``tasks/diff_demo`` (or
``tasks/diff_natural``) from ``lm_diff/data/<suite>/index.json``; ``python -m lm_diff.bench.suites path`` prints :func:`tasks_dir`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from lm_diff.bench.categories import categories_from_index, group_children, lookup_category, plugin_task_categories
from lm_diff.bench.demo_yamls import demo_index, render_demo_yamls, write_demo_yamls
from lm_diff.bench.paths import DATA_ENV, SUITES, data_root, resolve_data_file, tasks_dir
from lm_diff.bench.probes import load_probe
from lm_diff.bench.render import PromptFormat, prepare_task, render_items
from lm_diff.errors import UserError
from lm_diff.io import read_jsonl
from lm_diff.organisms.checks import check

__all__ = [  # re-exported: lm-eval task YAML, the pyproject entry point and callers use these paths
    "DATA_ENV", "data_root", "tasks_dir", "resolve_data_file", "lookup_category", "plugin_task_categories",
    "demo_index", "render_demo_yamls", "write_demo_yamls",
    "task_manager", "bench_task_manager", "needs_defaults", "load_split", "load_probe", "decode_row", "process_generation",
    "task_categories", "task_prompts", "quiet_own_overrides", "main",
]

# ----------------------------------------------------------------------------------------------------------------------
# The task manager (lm-eval imported lazily: `python -m lm_diff.bench.suites path` must stay instant)


class _OwnOverrideFilter(logging.Filter):
    """Drop lm-eval's 'Task X overrides existing task' warnings when both copies are lm_diff's own suites.

    An environment that still holds copies in ``lm_eval/tasks/diff_*`` (wheels before the ``.pth`` route) indexes the
    suites twice; the include-path copy wins, which is what we want, so the warning is noise.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "overrides existing task" not in msg:
            return True
        return not any(f"{os.sep}{s}{os.sep}" in msg and f"lm_eval{os.sep}tasks{os.sep}{s}" in msg for s in SUITES)


class _CustomDatasetNoteFilter(logging.Filter):
    """Drop lm-eval's per-task note that custom kwargs can go to ``--metadata``: every task using ``custom_dataset``
    (all of lm_diff's) logs it on every build, and it asks nothing of the user."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed to `--metadata`" not in record.getMessage()


def quiet_own_overrides() -> None:
    """Install lm_diff's log filters on lm-eval's loggers (idempotent)."""
    for name, cls in (("lm_eval.tasks._index", _OwnOverrideFilter), ("lm_eval.api.task", _CustomDatasetNoteFilter)):
        lg = logging.getLogger(name)
        if not any(isinstance(f, cls) for f in lg.filters):
            lg.addFilter(cls())


def task_manager(extra: Optional[Iterable[str | os.PathLike]] = None, include_defaults: bool = False, metadata=None):
    """A ``TaskManager`` over lm_diff's tasks plus ``extra`` directories (later ones override earlier ones).

    ``include_defaults=False`` (the default) skips indexing lm-eval's ~14,700 built-in tasks (~10-15 s); pass True
    for suites that reference upstream tasks (``diff_gemma``).
    """
    from lm_eval.tasks import TaskManager  # noqa: PLC0415 - heavy (seconds); `suites path` and tasks_dir stay instant

    quiet_own_overrides()
    paths: list[str] = [str(tasks_dir())]
    for p in extra or ():
        p = str(Path(p).expanduser())
        if not Path(p).is_dir():
            raise UserError(f"include path {p} is not a directory; fix benchmarks.include_path")
        if p not in paths:
            paths.append(p)
    return TaskManager(include_path=paths, include_defaults=include_defaults, metadata=metadata)


def needs_defaults(task_names: Iterable[str], extra: Optional[Iterable[str]] = None) -> bool:
    """True if some requested name (or a child it references) is not defined in lm_diff's or ``extra`` task dirs."""
    tm = task_manager(extra, include_defaults=False)
    idx = tm.task_index
    seen: set[str] = set()

    def missing(name: str) -> bool:
        if name in seen:
            return False
        seen.add(name)
        entry = idx.get(name)
        if entry is None:
            return not Path(name).is_file()
        kind = entry.kind.name
        if kind == "TAG":
            return any(missing(t) for t in entry.tags)
        if kind == "GROUP":
            return any(missing(c) for c in group_children(name, entry.cfg or {}, idx) if isinstance(c, str))
        return False

    return any(missing(n) for n in task_names)


# ----------------------------------------------------------------------------------------------------------------------
# Functions referenced from task YAML (!function lm_diff.bench.suites.*)


def load_split(data_file: str, split: str = "test", **_: Any):
    """``custom_dataset`` loader: a ``DatasetDict`` with one split read from a JSONL file under ``lm_diff/data``.

    lm-eval calls it as ``custom_dataset(**metadata, **dataset_kwargs)``; metadata carries the CLI ``model_args`` and
    ``version``, hence ``**_``. Dict-valued fields (e.g. a generation row's ``check``) are stored as JSON strings so rows
    with differently-shaped dicts do not get merged into one Arrow struct (which would add ``None`` keys);
    :func:`process_generation` decodes them again. No Arrow cache is written.
    """
    import datasets  # noqa: PLC0415 - heavy (seconds); lm-eval has imported it by the time it calls this

    rows = read_jsonl(resolve_data_file(data_file))
    if not rows:
        raise UserError(f"task data file {data_file} has no rows")
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    dict_cols = {k for k in keys if any(isinstance(r.get(k), dict) for r in rows)}
    cols = {
        k: [json.dumps(r.get(k), sort_keys=True, ensure_ascii=False) if k in dict_cols else r.get(k) for r in rows]
        for k in keys
    }
    return datasets.DatasetDict({split: datasets.Dataset.from_dict(cols)})


def decode_row(doc: dict) -> dict:
    """The original JSONL row for a logged or in-task ``doc`` (undoes :func:`load_split`'s JSON encoding of dicts)."""
    row = dict(doc)
    for k in ("check",):
        v = row.get(k)
        if isinstance(v, str) and v[:1] in "{[":
            try:
                row[k] = json.loads(v)
            except json.JSONDecodeError:
                pass
    return row


def process_generation(doc: dict, results: list) -> dict[str, float]:
    """``process_results`` for generation tasks: ``{"acc": 1.0 if the row's check passes on the output else 0.0}``.

    ``results[0]`` is the generated string; the check is ``lm_diff.organisms.checks.check(row, text) -> bool``.
    """
    text = results[0] if results else ""
    if not isinstance(text, str):  # repeats > 1 or a filter that returns a list
        text = text[0] if text else ""
    return {"acc": float(bool(check(decode_row(doc), text)))}


# ----------------------------------------------------------------------------------------------------------------------
# Categories


def bench_task_manager(cfg: Any):
    """lm-eval TaskManager for the configured suite: lm_diff's tasks + include_path, built-ins only if needed."""
    extra = [str(cfg.resolve_path(p)) for p in cfg.benchmarks.include_path]
    return task_manager(extra or None, include_defaults=needs_defaults(cfg.benchmarks.tasks, extra))


def task_categories(
    task_names: Iterable[str],
    task_manager=None,
    overrides: Optional[Mapping[str, str]] = None,
    *,
    results: Optional[Mapping[str, Any]] = None,
    taxonomy: Optional[Iterable[Any]] = None,
) -> dict[str, str]:
    """The one task -> capability category resolver: every leaf task under ``task_names`` mapped to its category,
    without building any task (:func:`lm_diff.bench.categories.categories_from_index` on ``task_manager``'s index).

    ``task_manager``: default lm_diff's own tasks. ``overrides``: ``benchmarks.task_categories``. ``results``: an
    lm-eval results dict, for task names read from a results file (tasks not in the index are known through its
    ``configs``; ``group_subtasks`` gives their groups). ``taxonomy``: the valid categories (names or ``Category``
    objects; default: the packaged taxonomy plus plugins), pass ``get_taxonomy(cfg)`` for a configured one.
    Precedence: overrides > ``metadata.category`` of the task or nearest group > the ``lm_diff_task_categories``
    plugin mapping. An unknown task, a group listing a missing task, or a category outside the taxonomy is a
    UserError naming the task; a known task without a category is left out (and logged).
    """
    tm = task_manager if task_manager is not None else globals()["task_manager"]()
    paths = getattr(tm, "include_path", None) or []
    searched = f" (searched {', '.join(map(str, paths if isinstance(paths, list) else [paths]))})" if paths else ""
    return categories_from_index(task_names, tm.task_index, overrides, results=results, taxonomy=taxonomy,
                                 searched=searched)


# ----------------------------------------------------------------------------------------------------------------------
# Prompts (for activation capture)


def task_prompts(
    task_names: Iterable[str],
    task_manager=None,
    limit: Optional[int] = None,
    *,
    fmt: Optional[PromptFormat] = None,
    tokenizer=None,
    categories: Optional[dict[str, str]] = None,
) -> list[dict]:
    """The prompt contexts lm-eval scores for each document: ``[{"text", "task", "category", "doc_id", "doc"}]``.

    Rendered by :func:`lm_diff.bench.render.render_items` with ``fmt`` (default: lm-eval's defaults), the settings the
    benchmark run used, so ``text`` equals the logged ``arguments.gen_args_0.arg_0`` of that run. Chat templates need
    ``tokenizer``. Rolling log-likelihood tasks (the perplexity probes) are left out: they have no prompt, their
    scored text is the document itself.
    """
    tm = task_manager if task_manager is not None else globals()["task_manager"]()
    fmt = fmt if fmt is not None else PromptFormat()
    names = list(task_names)
    cats = categories if categories is not None else task_categories(names, tm)
    loaded = tm.load(names)
    out: list[dict] = []
    for task_name, task in loaded["tasks"].items():
        if task.OUTPUT_TYPE == "loglikelihood_rolling":
            continue
        prepare_task(task, fmt)
        for doc_id, doc, text in render_items(task, fmt, tokenizer=tokenizer, limit=limit):
            out.append({"text": text, "task": task_name, "category": cats.get(task_name), "doc_id": doc_id, "doc": doc})
    return out


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m lm_diff.bench.suites write-yamls [--check] | path``."""
    p = argparse.ArgumentParser(prog="python -m lm_diff.bench.suites", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write-yamls", help="regenerate tasks/<suite> from lm_diff/data/<suite>/index.json")
    w.add_argument("--suite", default="diff_demo", choices=["diff_demo", "diff_natural"])
    w.add_argument("--index", type=Path, default=None)
    w.add_argument("--out", type=Path, default=None)
    w.add_argument("--check", action="store_true", help="exit 1 if the committed YAML differs from the index")
    sub.add_parser("path", help="print the task directory (for lm_eval --include_path)")
    args = p.parse_args(argv)
    if args.cmd == "path":
        print(tasks_dir())
        return 0
    try:
        changed = write_demo_yamls(args.out, args.index, check=args.check, suite=args.suite)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if changed:
            print("out of date: " + ", ".join(changed) + " (run python -m lm_diff.bench.suites write-yamls)", file=sys.stderr)
            return 1
        print(f"tasks/{args.suite} is up to date")
        return 0
    print(f"wrote {len(changed)} file(s)" + (": " + ", ".join(changed) if changed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
