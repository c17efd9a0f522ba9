"""Grounding prompts drawn from the benchmark's own items (``categories.grounding: benchmark``).

Category prompts: for every task of the configured suite with a category, the items lm-eval does **not** score,
rendered exactly as it scores items (:mod:`lm_diff.bench.render`: same chat template, few-shot format,
``fewshot_as_multiturn`` and system prompt). The split (docs/method.md#benchmark-grounding):

- scored: the first ``benchmarks.limit`` documents of the evaluation split (all of them without a limit);
- grounding: the evaluation documents after the limit, then the task's training and validation documents when they
  are not the evaluation split. A scored item is never a grounding prompt.

Tasks of one category are taken in turn (round robin) up to ``categories.grounding_per_category`` prompts
(:data:`DEFAULT_PER_CATEGORY` when unset). A category with fewer than ``categories.benchmark_min_items`` held-out
items takes the built-in real-language prompts of that category instead, and :func:`benchmark_grounding` says so.
Neutral prompts are the first documents of the capture corpus's plain-text sources (``chat: false``), the built-in
neutral prose when it has none. A real pair is never grounded on organism text (see :func:`benchmark_grounding`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

from lm_diff.bench.probes import PROBE_PREFIX
from lm_diff.bench.render import format_of, prepare_task, render_docs, strip_bos
from lm_diff.bench.suites import bench_task_manager, task_categories
from lm_diff.capture.corpus import read_source
from lm_diff.categorize.builtin_grounding import builtin_prompts, cap_per_category
from lm_diff.categorize.taxonomy import category_names

NEUTRAL = "neutral"
DEFAULT_PER_CATEGORY = 64
"""Prompts per category when ``categories.grounding_per_category`` is unset."""
ORGANISM_TASKS = ("diff_demo_",)
"""Task-name prefixes of the organisms' own benchmark: its items are organism text."""
MAX_CHARS = 4000
"""Neutral corpus documents are cut to this many characters (grounding uses a prompt's token-max activation)."""

__all__ = ["DEFAULT_PER_CATEGORY", "benchmark_grounding", "held_out_docs"]


class _WordCounter:
    """Stands in for a tokenizer where only a rough length is needed (cache keys, no tokenizer loaded)."""

    def __call__(self, text: str, **_: Any) -> dict:
        return {"input_ids": text.split()}


def held_out_docs(task: Any, scored: int | None) -> Iterator[Any]:
    """The task's documents that lm-eval does not score when it scores the first ``scored`` evaluation documents."""
    if scored is not None:
        for i, doc in enumerate(task.eval_docs):
            if i >= scored:
                yield doc
    eval_split = task.config.test_split if task.has_test_docs() else task.config.validation_split
    for has, split, docs in (("has_training_docs", task.config.training_split, "training_docs"),
                             ("has_validation_docs", task.config.validation_split, "validation_docs")):
        if split and split != eval_split and getattr(task, has)():
            yield from getattr(task, docs)()


def _rows(texts: Iterator[str], category: str, task: str, tokenizer: Any) -> Iterator[dict]:
    for text in texts:
        yield {"text": strip_bos(text, tokenizer), "category": category, "source": f"benchmark:{task}"}


def _category_prompts(config: Any, taxonomy: Any, tokenizer: Any, per_category: int,
                      organism_pair: bool) -> tuple[dict[str, list[dict]], bool]:
    """(prompts per category, whether the suite scores a built-in perplexity probe)."""
    from lm_eval.evaluator_utils import get_sample_size  # noqa: PLC0415 - heavy; the task manager has loaded lm-eval

    b = config.benchmarks
    tm = bench_task_manager(config)
    cats = task_categories(b.tasks, tm, overrides=b.task_categories, taxonomy=taxonomy)
    fmt = format_of(b)
    if fmt.apply_chat_template and tokenizer is None:  # cache keys: the item contents, without the chat template
        fmt = dataclasses.replace(fmt, apply_chat_template=False)
    loaded = tm.load(list(b.tasks))["tasks"]
    streams: dict[str, list[Iterator[dict]]] = {}
    for name, task in loaded.items():
        cat = cats.get(name)
        if cat is None or (not organism_pair and name.startswith(ORGANISM_TASKS)):
            continue
        if task.OUTPUT_TYPE == "loglikelihood_rolling":  # a perplexity probe: no prompt, and its text is held out
            continue
        prepare_task(task, fmt)
        docs = held_out_docs(task, get_sample_size(task, b.limit))
        streams.setdefault(cat, []).append(_rows(render_docs(task, docs, fmt, tokenizer=tokenizer), cat, name, tokenizer))
    out: dict[str, list[dict]] = {}
    for cat, its in streams.items():
        rows: list[dict] = []
        while its and len(rows) < per_category:
            for it in list(its):
                row = next(it, None)
                if row is None:
                    its.remove(it)
                elif len(rows) < per_category:
                    rows.append(row)
        out[cat] = rows
    return out, any(name.startswith(PROBE_PREFIX) for name in cats)


def _neutral_prompts(config: Any, tokenizer: Any, n: int, organism_pair: bool) -> list[dict]:
    sources = [s for s in getattr(config.capture, "corpus", [])
               if not s.chat and (organism_pair or not s.path.startswith("organisms:"))]
    out: list[dict] = []
    for k, src in enumerate(sources):
        if len(out) >= n:
            break
        src = dataclasses.replace(src, max_docs=n - len(out))
        docs = read_source(src, tokenizer or _WordCounter(), budget_tokens=10**12, seed=config.capture.seed + 7919 + k,
                           where=f"capture.corpus (neutral grounding prompts from {src.path})")
        out += [{"text": d["text"][:MAX_CHARS], "category": NEUTRAL, "source": f"corpus:{src.path}"} for d in docs]
    return out


def benchmark_grounding(config: Any, taxonomy: Any, tokenizer: Any = None, *, organism_pair: bool = False,
                        min_items: int | None = None) -> tuple[list[dict], dict[str, dict]]:
    """``(prompts, provenance)``: labelled prompts ``[{"text", "category", "source"}]`` and, per category and for
    neutral, ``{"source": "benchmark" | "corpus" | "builtin", "n": int, "reason"?: str}``.

    ``organism_pair`` False (a real pair): the organisms' own benchmark (``diff_demo``) and generated corpus text
    (``organisms:*`` sources) are never used, so a real pair is not grounded on organism text."""
    cats_cfg = config.categories
    per_category = cats_cfg.grounding_per_category or DEFAULT_PER_CATEGORY
    min_items = cats_cfg.benchmark_min_items if min_items is None else min_items
    names = category_names(taxonomy)
    found, probes = _category_prompts(config, taxonomy, tokenizer, per_category, organism_pair)
    prompts: list[dict] = []
    provenance: dict[str, dict] = {}
    fallback: list[str] = []
    for cat in names:
        rows = found.get(cat, [])
        if len(rows) >= min_items:
            prompts += rows
            provenance[cat] = {"source": "benchmark", "n": len(rows)}
        else:
            fallback.append(cat)
            why = ("no task of the suite has this category" if cat not in found else
                   f"only {len(rows)} held-out items (benchmark_min_items {min_items})")
            provenance[cat] = {"source": "builtin", "n": 0, "reason": why}
    if fallback:
        # the built-in set's probe rows are held out when the suite scores them (docs/method.md#perplexity-probes)
        rows = [dict(p, source="builtin") for p in builtin_prompts(tokenizer, categories=fallback, include_neutral=False,
                                                                    exclude_probes=probes)]
        rows = cap_per_category(rows, per_category)
        prompts += rows
        for cat in fallback:
            provenance[cat]["n"] = sum(r["category"] == cat for r in rows)
    n_neutral = max([sum(p["category"] == c for p in prompts) for c in names] + [1])
    neutral = _neutral_prompts(config, tokenizer, n_neutral, organism_pair)
    if neutral:
        provenance[NEUTRAL] = {"source": "corpus", "n": len(neutral)}
    else:
        neutral = cap_per_category([dict(p, source="builtin") for p in builtin_prompts(tokenizer, categories=[])], n_neutral)
        provenance[NEUTRAL] = {"source": "builtin", "n": len(neutral),
                               "reason": "the capture corpus has no plain-text source (organism text is not used)"}
    return prompts + neutral, provenance

