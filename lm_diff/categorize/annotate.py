"""LLM annotation of selected latents (docs/method.md#llm-annotation): Delphi-style explain → detection scoring → F1 filter.

Off by default (``categories.method: grounded``). For each selected latent:

1. **Explain.** The explainer LLM sees the latent's top activating examples with activating tokens marked ``<<tok>>`` and
   their activations (scaled 0–10, as in Delphi), and answers JSON ``{"explanation": ..., "category": ...}`` with the
   category constrained to the taxonomy ∪ {``none``}. A malformed answer or an unknown category gets one corrective
   retry; after that the category is ``none`` (and a missing explanation stays empty).
2. **Detection scoring.** The scorer LLM sees the explanation and a shuffled, held-out mix of activating and non-activating
   examples (plain text, no markers) and answers which examples the explanation describes (JSON list of 0/1). Precision,
   recall, F1 and balanced accuracy are computed against the truth; the explanation is **kept** when F1 ≥
   ``AnnotatorConfig.f1_min`` (default 0.7).

Backends (:mod:`lm_diff.categorize.llm_backends`): any OpenAI-compatible ``/chat/completions`` endpoint or a local
Hugging Face causal LM; responses are cached in a JSONL file, so a rerun costs no LLM calls.

Examples mapping accepted by :func:`annotate_latents` (the Delphi-compatible export of ``lm_diff.diff.examples``)::

    examples[latent] = {                # key: the latent id as int (a str of the id is also accepted, e.g. from JSON)
        "activating": [                 # ideally sorted by max activation, descending; any order works
            {"text": str,               # the window's text
             "tokens": [str, ...],      # decoded token strings whose concatenation is the window text
             "acts": [float, ...]},     # this latent's activation per token (same length as tokens; > 0 = active)
            ...
        ],
        "non_activating": [             # windows on which the latent does not fire; "tokens"/"acts" optional here
            {"text": str, "tokens": [...], "acts": [...]},
            ...
        ],
    }

An activating example without ``tokens``/``acts`` is shown without markers. The activating examples are split
deterministically: ``test_examples`` of them, spread evenly over the activation ranks (quantile-like), are held out for
detection scoring; the explainer sees the strongest ``examples`` of the rest.
"""

from __future__ import annotations

import math
import os
import random
from typing import Any, Callable, Mapping, Optional, Sequence

import pandas as pd

from lm_diff.categorize.llm_backends import ResponseCache, make_backend
from lm_diff.categorize.llm_messages import (
    NONE,
    detect_messages,
    example_max_act,
    explain_messages,
    parse_detection,
    parse_explanation,
)
from lm_diff.console import err
from lm_diff.console import progress as progress_bar
from lm_diff.errors import UserError
from lm_diff.plugins.hookspecs import hookimpl
from lm_diff.stats import cohens_kappa

COLUMNS = [
    "latent",
    "explanation",
    "category",
    "detection_f1",
    "detection_balanced_acc",
    "kept",
    "detection_precision",
    "detection_recall",
    "n_test",
]

# ----------------------------------------------------------------------------------------------------------------------
# Statistics


def detection_metrics(truth: Sequence[int], pred: Sequence[int]) -> dict[str, float]:
    """Precision, recall, F1 and balanced accuracy of 0/1 predictions (0 where undefined; balanced accuracy averages
    the rates that exist)."""
    tp = sum(1 for t, p in zip(truth, pred) if t and p)
    fp = sum(1 for t, p in zip(truth, pred) if not t and p)
    fn = sum(1 for t, p in zip(truth, pred) if t and not p)
    tn = sum(1 for t, p in zip(truth, pred) if not t and not p)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    rates = []
    if tp + fn:
        rates.append(recall)
    if tn + fp:
        rates.append(tn / (tn + fp))
    bal = sum(rates) / len(rates) if rates else float("nan")
    return {"precision": precision, "recall": recall, "f1": f1, "balanced_acc": bal}


def compare_with_grounded(annotations, grounded, only_kept: bool = True) -> dict[str, Any]:
    """Cohen's κ between LLM categories and grounded categories on the latents both label (docs/method.md#llm-annotation).

    ``annotations``: output of :func:`annotate_latents`. ``grounded``: ``categorize.grounded_assign`` output (latent,
    category, auroc, assigned; possibly several rows per latent): each latent's grounded label is its assigned category
    with the highest AUROC, or ``none``. With ``only_kept`` only explanations that passed the F1 filter count.
    Returns ``{"kappa", "n", "agreement"}``; kappa is NaN when both sides use one and the same label
    (``stats.cohens_kappa``: undefined, agreement is then 1).
    """
    ann = annotations[annotations["kept"]] if only_kept else annotations
    g = grounded
    if "assigned" in g.columns:
        g = g[g["assigned"].astype(bool)]
    if "auroc" in g.columns:
        g = g.sort_values("auroc", ascending=False)
    glabel = g.drop_duplicates("latent").set_index("latent")["category"].to_dict()
    a_labels, g_labels = [], []
    for lat, cat in zip(ann["latent"], ann["category"]):
        a_labels.append(cat)
        g_labels.append(glabel.get(lat, NONE))
    n = len(a_labels)
    agree = sum(x == y for x, y in zip(a_labels, g_labels)) / n if n else float("nan")
    return {"kappa": cohens_kappa(a_labels, g_labels), "n": n, "agreement": agree}


# ----------------------------------------------------------------------------------------------------------------------
# Annotation


def _examples_for(examples: Mapping[Any, Any], latent: Any) -> dict[str, list]:
    ex = examples.get(latent)
    if ex is None:
        ex = examples.get(str(latent))
    if ex is None and isinstance(latent, str) and latent.lstrip("-").isdigit():
        ex = examples.get(int(latent))
    ex = ex or {}
    return {"activating": list(ex.get("activating") or []), "non_activating": list(ex.get("non_activating") or [])}


def split_examples(ex: Mapping[str, list], n_explain: int, n_test: int, n_non: int) -> tuple[list, list, list]:
    """``(explain, test_activating, test_non_activating)``: held-out activating examples spread evenly over the
    activation ranks (at most half of them), the strongest ``n_explain`` of the rest for the explainer."""
    act = sorted(ex["activating"], key=example_max_act, reverse=True)
    n = len(act)
    k = min(n_test, n // 2)
    test_idx = {int((i + 0.5) * n / k) for i in range(k)} if k else set()  # centre of each of k equal rank bins
    test = [act[i] for i in sorted(test_idx)]
    rest = [e for i, e in enumerate(act) if i not in test_idx]
    return rest[:n_explain], test, list(ex["non_activating"])[:n_non]


def _annotator_config(config: Any) -> Any:
    """Accept an AnnotatorConfig, a CategoriesConfig or a RunConfig."""
    if hasattr(config, "categories"):
        config = config.categories
    if hasattr(config, "annotator"):
        config = config.annotator
    return config


def annotate_latents(
    latents,
    examples: Mapping[Any, Mapping[str, list]],
    taxonomy: Sequence[Any],
    config: Any,
    *,
    backend: Optional[Callable[[list[dict[str, str]]], str]] = None,
    cache_path: Optional[str | os.PathLike] = None,
    progress: bool = True,
):
    """Explain, categorise and detection-score each selected latent; return one row per annotated latent.

    ``latents``: DataFrame with a ``latent`` column (rows in priority order; at most ``max_latents`` are annotated).
    ``examples``: the mapping documented in the module docstring. ``taxonomy``: ``Category`` objects (``name``,
    ``description``). ``config``: ``AnnotatorConfig`` (a ``CategoriesConfig`` or ``RunConfig`` also works).
    ``backend``: optional callable ``messages -> text`` replacing the configured endpoint/HF model.
    ``cache_path``: JSONL response cache (default ``config.cache``; None = no cache).

    Returns a DataFrame with columns ``latent, explanation, category, detection_f1, detection_balanced_acc, kept``
    plus ``detection_precision, detection_recall, n_test``. Latents without activating examples get an empty
    explanation, category ``none``, NaN scores and ``kept = False``; so do explanations whose detection answer could not
    be parsed after one retry.
    """
    cfg = _annotator_config(config)
    if "latent" not in getattr(latents, "columns", []):
        raise UserError("annotate_latents: the latents table needs a 'latent' column")
    names = [c.name for c in taxonomy]
    ids = list(latents["latent"])[: cfg.max_latents]
    chat = backend if backend is not None else make_backend(cfg)
    backend_name = getattr(chat, "name", getattr(chat, "__name__", "custom"))
    cache = ResponseCache(cache_path if cache_path is not None else cfg.cache)
    params = {"backend": backend_name, "model": cfg.model, "temperature": cfg.temperature, "max_new_tokens": cfg.max_new_tokens}
    stats = {"calls": 0, "cached": 0}

    def ask(messages: list[dict[str, str]], kind: str) -> str:
        key = ResponseCache.key({**params, "messages": messages})
        hit = cache.get(key)
        if hit is not None:
            stats["cached"] += 1
            return hit
        text = chat(messages)
        stats["calls"] += 1
        cache.put(key, text, kind)
        return text

    rows = []
    with progress_bar("annotating latents", total=len(ids), enabled=progress) as bar:
        for lat in ids:
            rows.append(_annotate_one(lat, _examples_for(examples, lat), taxonomy, names, cfg, ask))
            bar.advance(1)
    df = pd.DataFrame(rows, columns=COLUMNS)
    if progress:
        err().print(
            f"annotated {len(df)} latents with {backend_name}: {int(df['kept'].sum())} kept (detection F1 >= "
            f"{cfg.f1_min:g}); {stats['calls']} LLM calls, {stats['cached']} cached"
            + (f"; cache {cache.path}" if cache.path else "")
        )
    return df


def _annotate_one(lat, ex, taxonomy, names, cfg, ask) -> dict[str, Any]:
    row: dict[str, Any] = {
        "latent": lat,
        "explanation": "",
        "category": NONE,
        "detection_f1": float("nan"),
        "detection_balanced_acc": float("nan"),
        "kept": False,
        "detection_precision": float("nan"),
        "detection_recall": float("nan"),
        "n_test": 0,
    }
    train, test_act, test_non = split_examples(ex, cfg.examples, cfg.test_examples, cfg.non_activating)
    if not train:
        return row
    # 1. explain (+ category), one corrective retry
    messages = explain_messages(train, taxonomy)
    answer = ask(messages, "explain")
    expl, cat, problem = parse_explanation(answer, names)
    if problem:
        retry = messages + [
            {"role": "assistant", "content": answer},
            {"role": "user", "content": f"That answer is invalid: {problem}. Reply again with JSON only: "
             '{"explanation": "...", "category": "..."}'},
        ]
        expl2, cat2, _ = parse_explanation(ask(retry, "explain-retry"), names)
        expl = expl2 or expl
        cat = cat2 if cat2 is not None else cat  # still invalid after one retry: category none
    row["explanation"] = expl or ""
    row["category"] = cat or NONE
    if not expl or not test_act:
        return row
    # 2. detection scoring on a shuffled held-out mix
    items = [(str(e.get("text", "")), 1) for e in test_act] + [(str(e.get("text", "")), 0) for e in test_non]
    rng = random.Random(f"{cfg.seed}:{lat}")
    rng.shuffle(items)
    texts, truth = [t for t, _ in items], [y for _, y in items]
    messages = detect_messages(expl, texts)
    answer = ask(messages, "detect")
    pred = parse_detection(answer, len(texts))
    if pred is None:
        retry = messages + [
            {"role": "assistant", "content": answer},
            {"role": "user", "content": f"That answer is invalid. Reply with JSON only: a list of exactly {len(texts)} "
             "values, each 0 or 1."},
        ]
        pred = parse_detection(ask(retry, "detect-retry"), len(texts))
    row["n_test"] = len(texts)
    if pred is None:
        return row
    m = detection_metrics(truth, pred)
    row.update(
        detection_f1=m["f1"],
        detection_balanced_acc=m["balanced_acc"],
        detection_precision=m["precision"],
        detection_recall=m["recall"],
        kept=bool(m["f1"] >= cfg.f1_min and not math.isnan(m["f1"])),
    )
    return row


@hookimpl
def lm_diff_annotators():
    """The LLM annotator (off unless ``categories.method`` is ``llm`` or ``both``)."""
    return {"llm": annotate_latents}
