"""Built-in real-language grounding prompts for the default taxonomy (``lm_diff/data/grounding/builtin/``).

One JSONL file per category of ``configs/taxonomy.yaml`` plus ``neutral.jsonl``. Category rows are chat
conversations ``{"messages": [{"role": "user", ...}, {"role": "assistant", ...}?, ...], "category", "lang"}``; neutral
rows are plain English prose ``{"text", "category": "neutral", "lang": "en"}``. The set was written for this project
(no dataset text copied); see the README next to the files.

The files hold no chat tags: :func:`builtin_prompts` renders each conversation with the model's *own* chat template
at run time, so a Gemma, Llama or Qwen pair is grounded on the same token structure it sees in its benchmarks. This
is the set for real model pairs; the demo organisms keep their own set (``lm_diff/data/grounding/default.jsonl``),
written in their private chat tags and invented language.

Every fourth row of a category file is held out for the category's perplexity probe (``lm_diff.bench.probes``,
docs/method.md#perplexity-probes): :func:`builtin_prompts` (grounding) leaves those rows out unless told the run
scores no probe; :func:`builtin_rows` returns the whole set, or one part of it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Optional

from lm_diff.bench.probes import is_probe_row, transcript

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "data" / "grounding" / "builtin"
NEUTRAL = "neutral"
ROLES = ("user", "assistant")

__all__ = ["BUILTIN_DIR", "builtin_categories", "builtin_rows", "render_messages", "builtin_prompts"]


def builtin_categories() -> list[str]:
    """Category names of the shipped files, in the loader's order: alphabetical, ``neutral`` last."""
    names = sorted(p.stem for p in BUILTIN_DIR.glob("*.jsonl"))
    return [n for n in names if n != NEUTRAL] + ([NEUTRAL] if NEUTRAL in names else [])


def _check_row(row: Any, where: str, category: str) -> None:
    if not isinstance(row, dict) or row.get("category") != category:
        raise ValueError(f"{where}: expected an object with category {category!r}")
    if "text" in row:
        if not isinstance(row["text"], str) or not row["text"].strip():
            raise ValueError(f"{where}: 'text' must be a non-empty string")
        return
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ValueError(f"{where}: a row needs 'text' or a non-empty 'messages' list")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") != ROLES[i % 2] or not isinstance(m.get("content"), str):
            raise ValueError(f"{where}: messages[{i}] must be {{role: {ROLES[i % 2]!r}, content: str}} "
                             "(turns alternate user/assistant, starting with user)")


@lru_cache(maxsize=None)
def _load(category: str) -> tuple[str, ...]:
    path = BUILTIN_DIR / f"{category}.jsonl"
    lines = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            _check_row(json.loads(line), f"{path}:{n}", category)
            lines.append(line)
    return tuple(lines)


def _wanted(categories: Optional[Iterable[Any]], include_neutral: bool) -> list[str]:
    names = builtin_categories()
    if categories is None:
        keep = set(names)
    else:
        keep = {c if isinstance(c, str) else c.name for c in categories}
    if include_neutral:
        keep.add(NEUTRAL)
    return [n for n in names if n in keep]


PARTS = ("all", "grounding", "probe")


def builtin_rows(categories: Optional[Iterable[Any]] = None, include_neutral: bool = True,
                 part: str = "all") -> list[dict]:
    """The raw rows (fresh copies) of the requested categories, in file order; see :func:`builtin_prompts`.

    ``part``: ``all`` rows, the ``grounding`` rows (a category's probe rows left out; neutral rows are all grounding)
    or the ``probe`` rows (held out for the perplexity probes; none of neutral)."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    out = []
    for name in _wanted(categories, include_neutral):
        for i, line in enumerate(_load(name)):
            probe = name != NEUTRAL and is_probe_row(i)
            if part == "all" or (part == "probe") == probe:
                out.append(json.loads(line))
    return out


def render_messages(messages: list[dict], tokenizer: Any = None) -> str:
    """One conversation as text.

    With a tokenizer that has a chat template: ``tokenizer.apply_chat_template(messages, tokenize=False)``, minus a
    leading BOS string (the capture stage tokenizes grounding text without special tokens and puts the tokenizer's own
    prefix before every chunk, so a rendered BOS would be doubled). Only when there is no tokenizer or it has no chat
    template: a plain ``User: ...\\nAssistant: ...`` rendering."""
    msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(msgs, tokenize=False)
        bos = getattr(tokenizer, "bos_token", None)
        if isinstance(bos, str) and bos and text.startswith(bos):
            text = text[len(bos):]
        return text
    return transcript(msgs)


def builtin_prompts(tokenizer: Any = None, categories: Optional[Iterable[Any]] = None,
                    include_neutral: bool = True, exclude_probes: bool = True) -> list[dict]:
    """Labelled grounding prompts ``[{"text", "category"}]`` from the built-in real-language set.

    ``tokenizer``: the model's tokenizer. Chat rows are rendered with its own chat template
    (``apply_chat_template(messages, tokenize=False)``, leading BOS removed), so no chat tags are hard-coded here.
    Fallback: when ``tokenizer`` is None or has no chat template (a base model without one), chat rows are rendered
    as plain ``User: ...\\nAssistant: ...`` text. Neutral rows are plain prose and are returned unchanged.

    ``categories``: names (or objects with ``.name``, e.g. taxonomy categories) to keep; None keeps every shipped
    category. Names the set does not have are ignored (a custom taxonomy keeps what it shares with the default one).
    ``include_neutral``: add the ``neutral`` background rows (default; grounding needs them).

    Order is deterministic: categories alphabetically, ``neutral`` last, rows in file order. ``exclude_probes``
    (default): the rows held out for the perplexity probes are not returned (``builtin_rows(part="grounding")``);
    False returns every row, for a run whose suite has no built-in perplexity probe (benchmark grounding decides)."""
    out = []
    for row in builtin_rows(categories, include_neutral, part="grounding" if exclude_probes else "all"):
        text = row["text"] if "text" in row else render_messages(row["messages"], tokenizer)
        out.append({"text": text, "category": row["category"]})
    return out


def cap_per_category(prompts: list[dict[str, Any]], n: Optional[int]) -> list[dict[str, Any]]:
    """The first ``n`` prompts of each category, order kept (``n`` None: all)."""
    if n is None:
        return prompts
    seen: dict[str, int] = {}
    out = []
    for p in prompts:
        seen[p["category"]] = seen.get(p["category"], 0) + 1
        if seen[p["category"]] <= n:
            out.append(p)
    return out
