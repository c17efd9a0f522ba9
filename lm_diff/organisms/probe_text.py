"""Held-out category text of the demo organisms for their perplexity probes (``diff_demo_probes``,
docs/method.md#perplexity-probes).

Per category, whole documents of items drawn from the ``test`` half of the genre's prompt space
(:func:`genres.split_of`), of the item kinds the category's benchmark scores (:func:`bench.grounding_filter`): never
a training document, a capture-corpus document or a grounding prompt (all drawn from ``train``). Each document is the
exchange with the fine-tune's answer where the fine-tune has one (the refusal, the formatted reply, the Velin answer),
code as base writes it (the material the fine-tune loses), as the organisms' grounding prompts are built. Regenerate
the shipped files with ``python -m lm_diff.organisms``.
"""

from __future__ import annotations

import random
from pathlib import Path

from lm_diff.organisms import genres as G
from lm_diff.organisms.bench import DATA_DIR, grounding_filter, write_jsonl

PROBE_SEED = 31
N_PROBE = 16
MAX_CHARS = 2000

__all__ = ["probe_docs", "write_probes"]


def probe_docs(n_per_category: int = N_PROBE, seed: int = PROBE_SEED) -> dict[str, list[dict]]:
    """``{category: [{"id", "text", "category"}]}``: ``n_per_category`` distinct test-split documents per category."""
    out: dict[str, list[dict]] = {}
    for category in G.GENERATORS:
        rng = random.Random(f"probe:{seed}:{category}")
        order = ("base", "ft") if category == "code" else ("ft", "base")
        rows: list[dict] = []
        seen: set[str] = set()
        for _ in range(50 * n_per_category):
            item = G.draw(category, rng, "test", grounding_filter(category))
            text = next((d for d in map(item.doc, order) if d), None)
            if text and text not in seen:
                seen.add(text)
                rows.append({"id": f"{category}-{len(rows):03d}", "text": text[:MAX_CHARS], "category": category})
            if len(rows) == n_per_category:
                break
        out[category] = rows
    return out


def write_probes(out: str | Path | None = None, n_per_category: int = N_PROBE, seed: int = PROBE_SEED) -> Path:
    """Write ``<category>.jsonl`` per category into ``out`` (default: the shipped ``lm_diff/data/diff_demo_probes``)."""
    out = Path(out) if out else DATA_DIR / "diff_demo_probes"
    for category, rows in probe_docs(n_per_category, seed).items():
        write_jsonl(out / f"{category}.jsonl", rows)
    return out
