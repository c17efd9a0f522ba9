"""The ``diff_natural`` benchmark items, grounding prompts and capture-corpus documents of the natural family.

Benchmark items come from the ``test`` half of every genre's prompt space; training documents, corpus documents and
grounding prompts from the ``train`` half, so no benchmark prompt occurs in any of them. Regenerate the shipped
files with ``python -m lm_diff.organisms``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

from lm_diff import io
from lm_diff.errors import UserError
from lm_diff.organisms import natural_genres as NG
from lm_diff.organisms.bench import DATA_DIR, write_jsonl

SUITE = "diff_natural"
BENCH_SEED = 31337
N_MC = 80


def _only(kind: str) -> Callable[[NG.Item], bool]:
    return lambda item: item.kind == kind


# (category, name, filter on items): the items where the two behaviours differ for planted categories
SUITES: list[tuple[str, str, Callable[[NG.Item], bool] | None]] = [
    ("safety", "refusal", _only("harmful")),
    ("multilingual", "translation", _only("translate")),
    ("instruction_following", "format", None),
    ("template_following", "turns", None),
    ("factual_verification", "claims", None),
    ("hallucination", "unanswerable", _only("unknown")),
    ("self_reference", "identity", None),
    ("query_classification", "message_type", None),
    ("structured_output", "json", None),
    ("code", "python", None),
    ("math", "sums", _only("carry")),
]


def task_name(category: str, name: str) -> str:
    return f"{SUITE}_{category}_{name}"


def suite_rows(category: str, name: str, where, n: int = N_MC, seed: int = BENCH_SEED) -> list[dict]:
    """Multiple-choice rows of one benchmark file (deterministic; queries unique within the file)."""
    rng = random.Random(f"{SUITE}:{seed}:{category}:{name}")
    rows: list[dict] = []
    seen: set[str] = set()
    for _ in range(200 * n):
        if len(rows) == n:
            break
        item = NG.draw(category, rng, "test", where)
        if item.query in seen:
            continue
        seen.add(item.query)
        choices = list(item.choices)
        gold_text = choices[0]
        rng.shuffle(choices)
        rows.append({"id": f"{category}_{name}-{len(rows):03d}", "query": item.query, "choices": choices,
                     "gold": choices.index(gold_text), "category": category})
    if len(rows) < n:
        raise RuntimeError(f"only {len(rows)} unique items for {category}_{name}")
    return rows


def benchmark_rows() -> dict[str, list[dict]]:
    """All benchmark files as ``{file name: rows}``."""
    return {f"{c}_{n}.jsonl": suite_rows(c, n, w) for c, n, w in SUITES}


def index_entries() -> list[dict]:
    return [{"file": f"{c}_{n}.jsonl", "task": task_name(c, n), "category": c, "output_type": "multiple_choice"}
            for c, n, _ in SUITES]


def write_benchmarks(out: str | Path | None = None) -> Path:
    """Write every suite file plus ``index.json`` into ``out`` (default: ``lm_diff/data/diff_natural``)."""
    out = Path(out) if out else DATA_DIR / SUITE
    files = benchmark_rows()
    for stale in out.glob("*.jsonl") if out.exists() else []:
        if stale.name not in files:
            stale.unlink()
    for fname, rows in files.items():
        write_jsonl(out / fname, rows)
    io.write_json(out / "index.json", index_entries())
    return out


def grounding_prompts(n_per_category: int = 40, seed: int = 7) -> list[dict]:
    """Labelled prompts ``{text, category}`` for grounding latents on natural pairs, ``neutral`` prose included.

    Texts are whole training-style exchanges from the ``train`` split, of the item kinds the category's benchmark
    scores, with the fine-tune's answer (where the two models' data differ, the fine-tune's behaviour is what a
    category's new latents would respond to; the query part is shared).
    """
    wheres = {c: w for c, _, w in SUITES}
    out: list[dict] = []
    for category in ["neutral", *NG.GENERATORS]:
        rng = random.Random(f"natural-grounding:{seed}:{category}")
        seen: set[str] = set()
        for _ in range(50 * n_per_category):
            if category == "neutral":
                text = NG.prose(rng)
            else:
                text = NG.draw(category, rng, "train", wheres.get(category)).doc("ft")
            if text not in seen:
                seen.add(text)
                out.append({"text": text, "category": category})
            if len(seen) == n_per_category:
                break
    return out


def write_grounding(path: str | Path | None = None, n_per_category: int = 40, seed: int = 7) -> Path:
    path = Path(path) if path else DATA_DIR / "grounding" / "natural.jsonl"
    return write_jsonl(path, grounding_prompts(n_per_category, seed))


def corpus_docs(genre: str, n_docs: int, seed: int) -> list[str]:
    """``n_docs`` documents for a capture corpus ``organisms:natural/<genre>``: ``neutral``, a category, ``mix``
    (base-mix genres, both models' behaviour alternating) or ``finetune`` (the fine-tune's own data)."""
    if genre not in ("mix", "finetune", "neutral") and genre not in NG.GENERATORS:
        raise UserError(f"unknown natural organism genre {genre!r}; use natural/neutral, natural/mix, "
                        f"natural/finetune or natural/<category> ({', '.join(NG.GENERATORS)})")
    rng = random.Random(f"natural-corpus:{genre}:{seed}")
    out: list[str] = []
    names = list(NG.BASE_MIX)
    for i in range(n_docs):
        g = genre
        if genre == "mix":
            g = rng.choices(names, [NG.BASE_MIX[n] + NG.FT_MIX[n] for n in names])[0]
        elif genre == "finetune":
            g = rng.choices(names, [NG.FT_MIX[n] for n in names])[0]
        variant = "ft" if (genre == "finetune" or i % 2) else "base"
        out.extend(NG.docs(g, variant, 1, rng))
    return out
