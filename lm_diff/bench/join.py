"""Join the lm-eval ``--log_samples`` outputs of two models and compute paired score gaps.

- ``load_run(path) -> Run``: an lm-eval ``--output_path`` tree (``<out>/<model_sanitized>/results_<dt>.json`` plus
  ``samples_<task>_<dt>.jsonl``), one model folder of it, a results JSON file, or lm_diff's own layout (``results.json`` plus
  ``samples_<task>.jsonl``). Task names come from the keys of ``configs`` in the results JSON, never from file names.
- ``join_runs(base, finetuned) -> DataFrame``: one row per ``(task, doc_id, filter)`` present in both runs, with equal
  ``doc_hash`` required. Mismatched suites, limits, documents, n-shot, filters, metrics or chat-template use raise ONE
  ``UserError`` naming what differs and how to fix it.
- ``score_gaps(joined, task_categories, stats_cfg) -> DataFrame`` (``lm_diff.bench.gaps``, re-exported here): Δscore
  per task, per category and overall with paired bootstrap CIs and sign-flip p-values.

Each logged per-item value is read as its metric's kind says (``lm_diff.bench.metric_kinds``): e.g. a perplexity task's
``[loglikelihood, n_words]`` becomes log-likelihood per word with weight ``n_words``; corpus-level metrics (F1, BLEU, ...)
keep the logged items for lm-eval's own aggregation. Unknown metrics are refused with a ``UserError`` naming them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from lm_diff.bench.gaps import GAP_COLUMNS, score_gaps, sign_flip_pvalue
from lm_diff.bench.metric_kinds import MetricKind, metric_kind, read_values
from lm_diff.errors import UserError
from lm_diff.io import read_jsonl

__all__ = ["Run", "load_run", "join_runs", "score_gaps", "sign_flip_pvalue", "GAP_COLUMNS", "PRIMARY_METRICS"]

PRIMARY_METRICS = ("acc", "exact_match", "acc_norm", "pass@1", "f1", "mcc")
"""Preferred primary metric per task, in order; otherwise the task's first metric."""

_KNOWN_DIRECTION = {"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "brier_score", "ter"}
"""Metrics whose compared quantity's direction comes from the kind table, not from the results' higher_is_better."""

_DT_RE = re.compile(r"_(\d{4}-\d{2}-\d{2}T[\d\-:.]+)\.jsonl?$")


@dataclass
class Run:
    """One model's lm-eval results and samples."""

    path: Path
    """The results JSON file."""
    results: dict
    """The parsed results JSON."""
    samples: pd.DataFrame
    """One row per (task, doc_id, filter): doc_hash, prompt_hash, metric, score (the per-item quantity of the metric's
    kind, NaN for corpus-level kinds), weight (words/bytes/instructions; 1 otherwise), raw (the logged value), prompt,
    doc."""
    model: str = ""
    """Model name from the results (``model_name`` or ``config.model_args``)."""
    tasks: list[str] = field(default_factory=list)
    """Leaf tasks (keys of ``configs``)."""
    metrics: dict[str, str] = field(default_factory=dict)
    """Primary metric per task."""
    kinds: dict[str, MetricKind] = field(default_factory=dict)
    """How each task's primary metric is read and compared (``lm_diff.bench.metric_kinds``)."""

    @property
    def n_shot(self) -> dict:
        return dict(self.results.get("n-shot") or {})

    @property
    def limit(self) -> Any:
        return (self.results.get("config") or {}).get("limit")

    def task_category(self, task: str) -> Optional[str]:
        """The category declared in the task's metadata (``metadata.category``), if any."""
        meta = ((self.results.get("configs") or {}).get(task) or {}).get("metadata") or {}
        cat = meta.get("category") if isinstance(meta, dict) else None
        return str(cat) if cat else None


# ----------------------------------------------------------------------------------------------------------------------
# Loading


def _find_results(path: Path) -> tuple[Path, str]:
    """Return (results file, layout) where layout is 'lm_eval' or 'own'."""
    if path.is_file():
        if path.suffix != ".json":
            raise UserError(f"{path}: expected an lm_eval results JSON or an --output_path directory")
        return path, ("own" if path.name == "results.json" else "lm_eval")
    if not path.is_dir():
        raise UserError(f"{path}: no such file or directory; pass the lm_eval --output_path directory of the run")
    if (path / "results.json").is_file():
        return path / "results.json", "own"
    direct = sorted(path.glob("results_*.json"))
    if direct:
        return direct[-1], "lm_eval"
    nested = sorted(path.glob("*/results_*.json"))
    if not nested:
        raise UserError(
            f"{path}: no results_*.json or results.json found; run lm_eval with --output_path {path} --log_samples "
            "(lm_eval only logs a warning when saving fails: check that the files exist)"
        )
    folders = sorted({p.parent.name for p in nested})
    if len(folders) > 1:
        raise UserError(
            f"{path}: holds results of several models ({', '.join(folders)}); pass the model folder, e.g. {path / folders[0]}"
        )
    # several timestamps of the same model: take the newest (ISO datetimes sort lexically)
    return sorted(nested, key=lambda p: p.name)[-1], "lm_eval"


def _samples_file(results_path: Path, layout: str, task: str) -> Optional[Path]:
    d = results_path.parent
    if layout == "own":
        p = d / f"samples_{task}.jsonl"
        return p if p.exists() else None
    dt = results_path.stem[len("results_"):]
    p = d / f"samples_{task}_{dt}.jsonl"
    if p.exists():
        return p
    cands = sorted(d.glob(f"samples_{glob_escape(task)}_*.jsonl"))
    cands = [c for c in cands if _DT_RE.search(c.name) and c.name[len(f"samples_{task}_"):].count("_") == 0]
    return cands[-1] if cands else None


def glob_escape(s: str) -> str:
    return re.sub(r"([\[\]\*\?])", r"[\1]", s)


def _primary_metric(task: str, results: dict, first_row: Optional[dict]) -> str:
    names: list[str] = []
    if first_row is not None and isinstance(first_row.get("metrics"), list):
        names = [str(m) for m in first_row["metrics"]]
    if not names:
        res = (results.get("results") or {}).get(task) or {}
        names = [k.split(",")[0] for k in res if "," in k and "_stderr" not in k.split(",")[0]]
    if not names:
        hib = (results.get("higher_is_better") or {}).get(task) or {}
        names = list(hib)
    for m in PRIMARY_METRICS:
        if m in names:
            return m
    if not names:
        raise UserError(f"task {task}: no metric found in its results or samples; is this an lm_eval results file?")
    return names[0]


def _first_prompt(row: dict) -> Optional[str]:
    args = row.get("arguments")
    if isinstance(args, dict) and args:
        first = args.get("gen_args_0") or next(iter(args.values()))
        if isinstance(first, dict):
            a0 = first.get("arg_0")
            return a0 if isinstance(a0, str) else None
    if isinstance(args, list) and args and isinstance(args[0], list) and args[0]:
        return args[0][0] if isinstance(args[0][0], str) else None
    return None


def load_run(path: str | Path) -> Run:
    """Read one model's lm-eval outputs (see module docstring for the accepted layouts)."""
    path = Path(path).expanduser()
    results_path, layout = _find_results(path)
    try:
        results = json.loads(results_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{results_path}: not valid JSON ({exc.msg} at line {exc.lineno}); rerun lm_eval to rewrite it") from None
    if not isinstance(results, dict) or "configs" not in results:
        raise UserError(f"{results_path}: has no 'configs' key; expected the results JSON written by lm_eval --output_path")
    tasks = list(results["configs"])
    rows: list[dict] = []
    metrics: dict[str, str] = {}
    kinds: dict[str, MetricKind] = {}
    missing = []
    for task in tasks:
        sp = _samples_file(results_path, layout, task)
        if sp is None:
            missing.append(task)
            continue
        task_rows = read_jsonl(sp, fix="the samples file is truncated or corrupt, rerun lm_eval")
        metric = _primary_metric(task, results, task_rows[0] if task_rows else None)
        metrics[task] = metric
        logged = [r.get(metric) for r in task_rows]
        example = next((v for v in logged if v is not None), None)
        kind = kinds[task] = metric_kind(task, metric, results["configs"].get(task), example)
        if kind.paired:
            values, weights = read_values(kind, task, metric, logged)
        else:
            values, weights = np.full(len(logged), np.nan), np.ones(len(logged))
        for r, v, w, raw in zip(task_rows, values, weights, logged):
            if "doc_id" not in r:
                raise UserError(f"{sp}: rows have no doc_id; expected lm_eval --log_samples output")
            rows.append(
                {
                    "task": task,
                    "doc_id": r["doc_id"],
                    "filter": str(r.get("filter", "none")),
                    "doc_hash": r.get("doc_hash"),
                    "prompt_hash": r.get("prompt_hash"),
                    "target_hash": r.get("target_hash"),
                    "metric": metric,
                    "score": float(v),
                    "weight": float(w),
                    "raw": raw,
                    "prompt": _first_prompt(r),
                    "target": r.get("target") if isinstance(r.get("target"), str) else json.dumps(r.get("target")),
                    "doc": r.get("doc"),
                }
            )
    if missing:
        raise UserError(
            f"{results_path.parent}: no samples file for task(s) {', '.join(missing)}; rerun lm_eval with --log_samples "
            "(samples_<task>_<datetime>.jsonl must sit next to the results JSON)"
        )
    cols = ["task", "doc_id", "filter", "doc_hash", "prompt_hash", "target_hash", "metric", "score", "weight", "raw", "prompt",
            "target", "doc"]
    samples = pd.DataFrame(rows, columns=cols)
    model = str(results.get("model_name") or (results.get("config") or {}).get("model_args") or results_path.parent.name)
    return Run(path=results_path, results=results, samples=samples, model=model, tasks=tasks, metrics=metrics, kinds=kinds)


def _higher_is_better(run: Run, hib: dict, task: str) -> bool:
    """Direction of the compared per-item quantity: the kind's for known metrics, else the results' ``higher_is_better``
    (lm-eval's flag is about its aggregate: for perplexity it is False, but the compared log-likelihood rises)."""
    kind = run.kinds.get(task)
    if kind is not None and run.metrics[task] in _KNOWN_DIRECTION:
        return kind.higher_is_better
    return bool((hib.get(task) or {}).get(run.metrics[task], True))


def _as_run(x: Run | str | Path) -> Run:
    return x if isinstance(x, Run) else load_run(x)


# ----------------------------------------------------------------------------------------------------------------------
# Joining


def _fmt(items, n: int = 5) -> str:
    items = list(items)
    s = ", ".join(str(i) for i in items[:n])
    return s + (f" and {len(items) - n} more" if len(items) > n else "")


def join_runs(base: Run | str | Path, finetuned: Run | str | Path) -> pd.DataFrame:
    """Pair base (A) and fine-tune (B) rows on (task, doc_id, filter); require equal doc_hash.

    Returns columns task, doc_id, filter, doc_hash, metric, score_a, score_b, weight, raw_a, raw_b, prompt, target, doc;
    ``df.attrs`` holds ``models`` (A, B names), ``metrics`` {task: metric}, ``kinds`` {task: MetricKind},
    ``higher_is_better`` {task: bool, of the compared per-item quantity}, ``n_shot`` and ``task_categories`` (from task
    metadata). Every mismatch is reported in one UserError.
    """
    a, b = _as_run(base), _as_run(finetuned)
    problems: list[str] = []
    fixes: list[str] = []
    ta, tb = set(a.tasks), set(b.tasks)
    if ta != tb:
        only_a, only_b = sorted(ta - tb), sorted(tb - ta)
        msg = "task suites differ:"
        if only_a:
            msg += f" only in base: {_fmt(only_a)};"
        if only_b:
            msg += f" only in fine-tune: {_fmt(only_b)};"
        problems.append(msg.rstrip(";"))
        fixes.append("run both models with the same --tasks")
    tasks = [t for t in a.tasks if t in tb]
    shot_diff = [f"{t} ({a.n_shot.get(t)} vs {b.n_shot.get(t)})" for t in tasks if a.n_shot.get(t) != b.n_shot.get(t)]
    if shot_diff:
        problems.append(f"n-shot differs for {_fmt(shot_diff)}")
        fixes.append("use the same --num_fewshot")
    if a.limit != b.limit:
        problems.append(f"--limit differs ({a.limit} vs {b.limit})")
        fixes.append("use the same --limit (or --samples)")
    ca, cb = a.results.get("chat_template_sha") or a.results.get("chat_template"), b.results.get("chat_template_sha") or b.results.get("chat_template")
    if (ca is None) != (cb is None):
        problems.append(f"chat template applied to {'base' if ca is not None else 'fine-tune'} only")
        fixes.append("pass --apply_chat_template to both runs or to neither")
    metric_diff = [f"{t} ({a.metrics.get(t)} vs {b.metrics.get(t)})" for t in tasks if a.metrics.get(t) != b.metrics.get(t)]
    if metric_diff:
        problems.append(f"primary metric differs for {_fmt(metric_diff)}")
        fixes.append("use the same task versions for both runs")

    key = ["task", "doc_id", "filter"]
    sa = a.samples[a.samples.task.isin(tasks)]
    sb = b.samples[b.samples.task.isin(tasks)]
    for name, s in (("base", sa), ("fine-tune", sb)):
        dup = s.duplicated(key)
        if dup.any():
            r = s[dup].iloc[0]
            problems.append(f"{name} samples repeat ({r.task}, doc {r.doc_id}, filter {r['filter']})")
            fixes.append("remove stale samples files from an earlier run")
    m = sa.merge(sb, on=key, how="outer", suffixes=("_a", "_b"), indicator=True)
    only = m[m["_merge"] != "both"]
    if len(only):
        by_task = only.groupby("task")["_merge"].agg(lambda s: (int((s == "left_only").sum()), int((s == "right_only").sum())))
        desc = [f"{t} (+{x[0]} base-only, +{x[1]} fine-tune-only)" for t, x in by_task.items()]
        problems.append(f"documents differ for {_fmt(desc)}")
        fixes.append("use the same --limit/--samples and filters for both runs")
    both = m[m["_merge"] == "both"]
    bad_hash = both[(both.doc_hash_a != both.doc_hash_b)]
    if len(bad_hash):
        desc = [f"{t} ({n} docs)" for t, n in bad_hash.groupby("task").size().items()]
        problems.append(f"doc_hash differs for {_fmt(desc)}: the two runs scored different document contents")
        fixes.append("evaluate both models on the same dataset version and task config")
    bad_weight = both[(both.doc_hash_a == both.doc_hash_b) & (both.weight_a != both.weight_b)
                      & both.weight_a.notna() & both.weight_b.notna()]
    if len(bad_weight):
        desc = [f"{t} ({n} docs)" for t, n in bad_weight.groupby("task").size().items()]
        problems.append(f"word/byte/instruction counts differ for {_fmt(desc)}: the targets were split differently")
        fixes.append("evaluate both models with the same lm-eval version and task config")
    if problems:
        uniq = list(dict.fromkeys(fixes))
        raise UserError(
            f"cannot pair {a.path.parent} with {b.path.parent}: " + "; ".join(problems) + ". Fix: " + "; ".join(uniq) + "."
        )
    out = pd.DataFrame(
        {
            "task": both.task,
            "doc_id": both.doc_id,
            "filter": both["filter"],
            "doc_hash": both.doc_hash_a,
            "metric": both.metric_a,
            "score_a": both.score_a.astype(float),
            "score_b": both.score_b.astype(float),
            "weight": both.weight_a.astype(float),
            "raw_a": both.raw_a,
            "raw_b": both.raw_b,
            "prompt": both.prompt_a,
            "target": both.target_a,
            "doc": both.doc_a,
        }
    ).reset_index(drop=True)
    hib_a = a.results.get("higher_is_better") or {}
    out.attrs = {
        "models": {"A": a.model, "B": b.model},
        "paths": {"A": str(a.path), "B": str(b.path)},
        "metrics": {t: a.metrics[t] for t in tasks},
        "kinds": {t: a.kinds[t] for t in tasks},
        "higher_is_better": {t: _higher_is_better(a, hib_a, t) for t in tasks},
        "n_shot": {t: a.n_shot.get(t) for t in tasks},
        "task_categories": {t: c for t in tasks if (c := a.task_category(t) or b.task_category(t))},
        "limit": a.limit,
    }
    return out


