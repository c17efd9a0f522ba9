"""Perplexity probes: per category, held-out text of the built-in real-language set scored with lm-eval's
``loglikelihood_rolling`` (docs/method.md#perplexity-probes).

A multiple-choice task at ceiling (both models 100 %) shows no score gap however much the fine-tune moved the
category; the log-likelihood each model assigns to category text moves with any change. The probe tasks
(``tasks/diff_probes/``: one task ``diff_probe_<category>`` per category of the default taxonomy, grouped as
``diff_probes``) score the rows of ``lm_diff/data/grounding/builtin/<category>.jsonl`` that grounding never uses:

- **split**: row *i* (0-based, in file order) of a category file is probe text when ``i % PROBE_EVERY ==
  PROBE_EVERY - 1`` (16 of 64); every other row is grounding text (:func:`is_probe_row`). The built-in grounding
  loader (``lm_diff.categorize.builtin_grounding``) drops probe rows (benchmark grounding's fallback whenever the
  suite scores a probe), so within a run a probe document is never a grounding prompt.
- **text**: each conversation as a plain ``User: ...`` / ``Assistant: ...`` transcript (:func:`transcript`), the same
  bytes for both models. A rolling log-likelihood request carries no chat template in lm-eval 0.4.13 (only the target
  is scored), and one text for both models keeps the per-document differences paired even when only one of the two
  has a chat template.
- **metric**: ``byte_perplexity``; lm_diff compares it per document as log-likelihood per byte (nats/byte, weighted
  by bytes, as lm-eval pools it), which is language-neutral (word counts mean little in Chinese or Japanese).

The task YAML holds no code and no data path: ``custom_dataset: !function lm_diff.bench.suites.load_probe`` with
``dataset_kwargs: {probe: <category>}``, resolved under ``lm_diff/data`` like the other local tasks.

The organisms have their own probes: the demo family's (``tasks/diff_demo_probes``, tasks
``diff_demo_probe_<category>``, ``dataset_kwargs: {probe: <category>, source: diff_demo}``) and the natural family's
(``tasks/diff_natural_probes``, tasks ``diff_natural_probe_<category>``, ``source: diff_natural``): test-split
documents of the organism genres, never training text nor a grounding prompt (``lm_diff.organisms.probe_text``,
shipped in ``lm_diff/data/diff_demo_probes`` and ``lm_diff/data/diff_natural_probes``). Each is a group of its own,
not part of ``diff_demo`` / ``diff_natural``.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Optional

from lm_diff.bench.paths import resolve_data_file
from lm_diff.errors import UserError

__all__ = ["PROBE_EVERY", "PROBE_PREFIX", "PROBE_PREFIXES", "PROBE_GROUP", "is_probe_row", "is_probe_task", "transcript", "probe_rows",
           "load_probe"]

PROBE_EVERY = 4
"""One row in PROBE_EVERY of each built-in category file is probe text (the last of every block)."""
PROBE_PREFIX = "diff_probe_"
"""Task-name prefix of the perplexity probes (``diff_probe_<category>``)."""
PROBE_PREFIXES = (PROBE_PREFIX, "diff_demo_probe_", "diff_natural_probe_")
"""Task-name prefixes of every perplexity probe: the real-language set's and the demo and natural organisms'."""
SOURCES = {"builtin": None, "diff_demo": "diff_demo_probes", "diff_natural": "diff_natural_probes"}
"""``source`` of a probe task → the folder under ``lm_diff/data`` whose ``<category>.jsonl`` rows are all probe text
(None: the built-in set, of which only the held-out rows are)."""
PROBE_GROUP = "diff_probes"
"""The group of all probe tasks."""
BUILTIN_SUBDIR = "grounding/builtin"
"""Where the built-in real-language set lives under ``lm_diff/data``."""


def is_probe_row(index: int) -> bool:
    """True when row ``index`` (0-based, file order) of a built-in category file is held out for the probe."""
    return index % PROBE_EVERY == PROBE_EVERY - 1


def is_probe_task(name: str) -> bool:
    """True for a perplexity-probe task name (``diff_probe_<category>``, ``diff_demo_probe_<category>``,
    ``diff_natural_probe_<category>``, also as ``group::diff_probe_...``)."""
    return str(name).split("::")[-1].startswith(PROBE_PREFIXES)


def transcript(messages: Iterable[dict]) -> str:
    """A conversation as plain text, one ``Role: content`` line per turn (no chat-template tokens)."""
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def _category_lines(category: str) -> list[str]:
    path = resolve_data_file(f"{BUILTIN_SUBDIR}/{category}.jsonl")
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def probe_rows(category: str, source: str = "builtin") -> list[dict]:
    """The probe documents of ``category``: ``[{"id", "text", "category", "lang"}]`` in file order; ``source`` is
    ``builtin`` (the held-out rows of the real-language set), ``diff_demo`` or ``diff_natural`` (the demo or natural
    organisms' probe text)."""
    if not category or "/" in category or category.startswith(".") or category == "neutral":
        raise UserError(f"perplexity probe {category!r}: expected a category of the built-in set "
                        f"(lm_diff/data/{BUILTIN_SUBDIR}/<category>.jsonl)")
    if source not in SOURCES:
        raise UserError(f"perplexity probe {category}: unknown source {source!r}; one of {', '.join(SOURCES)}")
    if SOURCES[source] is not None:
        path = resolve_data_file(f"{SOURCES[source]}/{category}.jsonl")
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [{"id": r["id"], "text": r["text"], "category": category, "lang": r.get("lang", "en")} for r in rows]
    out = []
    for i, line in enumerate(_category_lines(category)):
        if not is_probe_row(i):
            continue
        row = json.loads(line)
        text = row["text"] if "text" in row else transcript(row["messages"])
        out.append({"id": f"{category}-{i:03d}", "text": text, "category": category, "lang": row.get("lang", "en")})
    return out


def load_probe(probe: Optional[str] = None, split: str = "test", source: str = "builtin", **_: Any):
    """``custom_dataset`` loader of a probe task: a ``DatasetDict`` with one split holding :func:`probe_rows`.

    lm-eval calls it as ``custom_dataset(**metadata, **dataset_kwargs)`` (hence ``**_``); ``probe`` comes from the
    task's ``dataset_kwargs``. No Arrow cache is written."""
    import datasets  # noqa: PLC0415 - heavy (seconds); lm-eval has imported it by the time it calls this

    if probe is None:
        raise UserError("a perplexity probe task needs dataset_kwargs.probe (the category)")
    rows = probe_rows(probe, source)
    if not rows:
        raise UserError(f"perplexity probe {probe}: the built-in set holds no held-out rows for it")
    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})
