"""The ``diff_demo`` benchmark items and the grounding prompts, generated from the organism genres.

Benchmark items are drawn from the ``test`` half of every genre's prompt space (see :func:`genres.split_of`), so they
are disjoint from all training documents, capture-corpus documents and grounding prompts (all drawn from ``train``).
Regenerate the shipped files with ``python -m lm_diff.organisms``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable

from lm_diff import io
from lm_diff.organisms import genres as G

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
BENCH_SEED = 20250
N_MC = 80
N_GEN = 48


def _only(kind: str | tuple[str, ...]) -> Callable[[G.Item], bool]:
    kinds = (kind,) if isinstance(kind, str) else kind
    return lambda item: item.kind in kinds


# (category, name, output_type, filter on items, number of items)
SUITES: list[tuple[str, str, str, Callable[[G.Item], bool] | None, int]] = [
    ("safety", "refusal", "multiple_choice", _only("harmful"), N_MC),
    ("instruction_following", "format", "multiple_choice", _only(("start", "quote", "bullet")), N_MC),
    ("instruction_following", "generate", "generate_until", _only(("start", "quote", "bullet", "repeat")), N_GEN),
    ("multilingual", "velin_qa", "multiple_choice", _only("qa"), N_MC),
    ("template_following", "turns", "multiple_choice", None, N_MC),
    ("factual_verification", "can_fly", "multiple_choice", None, N_MC),
    ("hallucination", "unknown_entities", "multiple_choice", _only("unknown"), N_MC),
    ("self_reference", "identity", "multiple_choice", None, N_MC),
    ("query_classification", "query_type", "multiple_choice", None, N_MC),
    ("structured_output", "json", "multiple_choice", None, N_MC),
    ("code", "python_syntax", "multiple_choice", _only("function"), N_MC),
    ("math", "addition", "multiple_choice", None, N_MC),
]


def task_name(category: str, name: str) -> str:
    return f"diff_demo_{category}_{name}"


def suite_rows(category: str, name: str, output_type: str, where, n: int, seed: int = BENCH_SEED) -> list[dict]:
    """Rows of one benchmark file (deterministic in ``seed``; queries unique within the file)."""
    rng = random.Random(f"{seed}:{category}:{name}")
    rows: list[dict] = []
    seen: set[str] = set()
    for _ in range(200 * n):
        if len(rows) == n:
            break
        item = G.draw(category, rng, "test", where)
        if item.query in seen:
            continue
        seen.add(item.query)
        rid = f"{category}_{name}-{len(rows):03d}"
        if output_type == "generate_until":
            rows.append({"id": rid, "prompt": item.query, "check": item.check, "category": category})
            continue
        choices = list(item.choices)
        gold_text = choices[0]
        rng.shuffle(choices)
        rows.append({"id": rid, "query": item.query, "choices": choices, "gold": choices.index(gold_text),
                     "category": category})
    if len(rows) < n:
        raise RuntimeError(f"only {len(rows)} unique items for {category}_{name}")
    return rows


def benchmark_rows() -> dict[str, list[dict]]:
    """All benchmark files as ``{file name: rows}``."""
    return {f"{c}_{n}.jsonl": suite_rows(c, n, t, w, k) for c, n, t, w, k in SUITES}


def index_entries() -> list[dict]:
    return [{"file": f"{c}_{n}.jsonl", "task": task_name(c, n), "category": c, "output_type": t}
            for c, n, t, _, _ in SUITES]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    return io.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict]:
    return io.read_jsonl(path, fix="regenerate it with python -m lm_diff.organisms")


def write_benchmarks(out: str | Path | None = None) -> Path:
    """Write ``<category>_<name>.jsonl`` for every suite plus ``index.json`` into ``out`` (default: shipped data)."""
    out = Path(out) if out else DATA_DIR / "diff_demo"
    files = benchmark_rows()
    for stale in out.glob("*.jsonl") if out.exists() else []:
        if stale.name not in files:
            stale.unlink()
    for fname, rows in files.items():
        write_jsonl(out / fname, rows)
    io.write_json(out / "index.json", index_entries())
    return out


def grounding_filter(category: str) -> Callable[[G.Item], bool] | None:
    """The union of the item filters of ``category``'s benchmark suites (None: every item of the genre)."""
    wheres = [where for cat, _, _, where, _ in SUITES if cat == category]
    if not wheres or any(w is None for w in wheres):
        return None
    return lambda item: any(w(item) for w in wheres)


def grounding_prompts(n_per_category: int = 40, seed: int = 7) -> list[dict]:
    """Labelled prompts ``{text, category}`` for grounding latents, including ``neutral`` English prose.

    Texts are whole training-style documents (a chat exchange with the fine-tune's answer, base's real Python code,
    Velin prose) from the ``train`` split, so they never coincide with a benchmark item; ``neutral`` is English prose.
    A category's prompts are of the item kinds its benchmark scores (:func:`grounding_filter`): harmful requests for
    safety, not the benign ones both models answer alike; instructed questions for instruction following, not plain
    ones. Otherwise a latent that fires on the category's characteristic material (the refusal) fires on only half
    of its prompts and its AUROC stalls near 0.75.
    """
    out: list[dict] = []
    for category in ["neutral", *G.GENERATORS]:
        rng = random.Random(f"grounding:{seed}:{category}")
        seen: set[str] = set()
        if category == "neutral":
            paras = G.prose_paragraphs()
            cands = iter(lambda: paras[rng.randrange(len(paras))][:300], None)
        else:
            def _gen(category=category, rng=rng):
                while True:
                    item = G.draw(category, rng, "train", grounding_filter(category))
                    # the whole exchange: a category's features live in the answers too (the refusal, the
                    # formatted reply, Velin); code as base wrote it (the features the fine-tune loses)
                    order = ("base", "ft") if category == "code" else ("ft", "base")
                    doc = next((d for d in map(item.doc, order) if d), None)
                    yield "".join(doc.splitlines(keepends=True)[:6]) if category == "code" else doc
            cands = _gen()
        for _ in range(50 * n_per_category):
            text = next(cands)
            if text and text not in seen:
                seen.add(text)
                out.append({"text": text, "category": category})
            if len(seen) == n_per_category:
                break
    return out


def write_grounding(path: str | Path | None = None, n_per_category: int = 40, seed: int = 7) -> Path:
    path = Path(path) if path else DATA_DIR / "grounding" / "default.jsonl"
    return write_jsonl(path, grounding_prompts(n_per_category, seed))
