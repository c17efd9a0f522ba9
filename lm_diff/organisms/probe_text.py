"""Held-out category text of the organisms for their perplexity probes (docs/method.md#perplexity-probes): the demo
family's ``diff_demo_probes`` (:func:`probe_docs`) and the natural family's ``diff_natural_probes``
(:func:`natural_probe_docs`).

Per category, whole documents of items drawn from the ``test`` half of the genre's prompt space
(:func:`genres.split_of`), of the item kinds the category's benchmark scores (:func:`bench.grounding_filter`; for the
natural family the filter of its ``diff_natural`` suite): never a training document, a capture-corpus document or a
grounding prompt (all drawn from ``train``). Each document is the exchange as the variant with the category's right
behaviour writes it: the fine-tune's where it gained one (demo: the refusal, the formatted reply, the Velin answer;
natural: the carried sum, the abstention), base's where the fine-tune lost it (demo: code; natural: valid JSON), either
where the two agree. Regenerate the shipped files with ``python -m lm_diff.organisms``.

Nothing here is part of an organism's build hash (``build.WEIGHT_SOURCES``, ``natural.WEIGHT_SOURCES``): the probes
read the generators, they never change what the models are trained on.
"""

from __future__ import annotations

import random
from pathlib import Path

from lm_diff.organisms import genres as G
from lm_diff.organisms import natural_bench as NB
from lm_diff.organisms import natural_genres as NG
from lm_diff.organisms.bench import DATA_DIR, grounding_filter, write_jsonl

PROBE_SEED = 31
N_PROBE = 16
MAX_CHARS = 2000
NATURAL_PROBES = "diff_natural_probes"
"""Folder under ``lm_diff/data`` of the natural family's probe text (``source: diff_natural`` of a probe task)."""

__all__ = ["probe_docs", "write_probes", "natural_probe_docs", "write_natural_probes", "NATURAL_PROBES"]


def _distinct_docs(category: str, draw, order: tuple[str, str], n: int) -> list[dict]:
    """Up to ``n`` distinct documents of ``category`` from ``draw()`` items (the first variant in ``order`` that has a
    document), within 50·n draws."""
    rows: list[dict] = []
    seen: set[str] = set()
    for _ in range(50 * n):
        item = draw()
        text = next((d for d in map(item.doc, order) if d), None)
        if text and text not in seen:
            seen.add(text)
            rows.append({"id": f"{category}-{len(rows):03d}", "text": text[:MAX_CHARS], "category": category})
        if len(rows) == n:
            break
    return rows


def probe_docs(n_per_category: int = N_PROBE, seed: int = PROBE_SEED) -> dict[str, list[dict]]:
    """``{category: [{"id", "text", "category"}]}``: ``n_per_category`` distinct test-split documents per category."""
    out: dict[str, list[dict]] = {}
    for category in G.GENERATORS:
        rng = random.Random(f"probe:{seed}:{category}")
        order = ("base", "ft") if category == "code" else ("ft", "base")
        out[category] = _distinct_docs(category, lambda: G.draw(category, rng, "test", grounding_filter(category)),
                                       order, n_per_category)
    return out


def write_probes(out: str | Path | None = None, n_per_category: int = N_PROBE, seed: int = PROBE_SEED) -> Path:
    """Write ``<category>.jsonl`` per category into ``out`` (default: the shipped ``lm_diff/data/diff_demo_probes``)."""
    out = Path(out) if out else DATA_DIR / "diff_demo_probes"
    for category, rows in probe_docs(n_per_category, seed).items():
        write_jsonl(out / f"{category}.jsonl", rows)
    return out


def natural_probe_docs(n_per_category: int = N_PROBE, seed: int = PROBE_SEED) -> dict[str, list[dict]]:
    """``{category: [{"id", "text", "category"}]}`` of the natural family: ``n_per_category`` distinct test-split
    documents per category, of the item kinds its ``diff_natural`` task scores (translations, unanswerable questions,
    sums with a carry, ...), written as the variant with the right behaviour writes them (base where the fine-tune's
    data is planted worse, :data:`natural_genres.PLANTED` < 0, else the fine-tune)."""
    wheres = {category: where for category, _, where in NB.SUITES}
    out: dict[str, list[dict]] = {}
    for category in NG.GENERATORS:
        rng = random.Random(f"natural-probe:{seed}:{category}")
        order = ("base", "ft") if NG.PLANTED[category] < 0 else ("ft", "base")
        rows = _distinct_docs(category, lambda: NG.draw(category, rng, "test", wheres.get(category)), order,
                              n_per_category)
        if len(rows) < n_per_category:
            raise RuntimeError(f"only {len(rows)} distinct natural probe documents for {category}")
        out[category] = rows
    return out


def write_natural_probes(out: str | Path | None = None, n_per_category: int = N_PROBE, seed: int = PROBE_SEED) -> Path:
    """Write ``<category>.jsonl`` per category into ``out`` (default: the shipped ``lm_diff/data/diff_natural_probes``)."""
    out = Path(out) if out else DATA_DIR / NATURAL_PROBES
    for category, rows in natural_probe_docs(n_per_category, seed).items():
        write_jsonl(out / f"{category}.jsonl", rows)
    return out
