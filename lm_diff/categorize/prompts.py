"""Grounding prompts: the labelled ``{"text", "category"}`` rows that ground latents in categories.

The built-in hook ``lm_diff_grounding_prompts`` picks the source named by ``categories.grounding``:

- a path: the user's JSONL of ``{text, category}`` rows;
- ``benchmark``: the suite's own items that lm-eval does not score, rendered as it scores them, with neutral prompts
  from the capture corpus's plain text (:mod:`lm_diff.categorize.benchmark_grounding`; categories with too few items
  take the built-in set);
- ``builtin``: the real-language set shipped for the default taxonomy (``lm_diff/data/grounding/builtin/``), each
  conversation rendered with the model's own chat template;
- ``organisms``: the organisms' generated set of the pair's family: the ``natural`` family's (ChatML-style turns,
  English, French, Spanish, German) when both models are ``organisms://natural[-tiny]/...`` or natural builds, else
  the demo family's (its private chat tags and invented language);
- unset (auto): ``organisms`` when every model of the pair is an organism, ``benchmark`` otherwise, so a real pair is
  never grounded on organism text.

Categories are checked against the taxonomy: an unknown category in the user's JSONL is an error; the built-in sets
keep the categories the taxonomy has.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from lm_diff.categorize.benchmark_grounding import benchmark_grounding
from lm_diff.categorize.builtin_grounding import builtin_prompts, cap_per_category  # noqa: F401 - re-exported
from lm_diff.categorize.taxonomy import category_names, get_taxonomy
from lm_diff.errors import UserError
from lm_diff.organisms import grounding_prompts as organism_grounding_prompts
from lm_diff.organisms import is_natural_spec, natural_grounding_prompts
from lm_diff.plugins.hookspecs import hookimpl

NEUTRAL = "neutral"
"""Label of background prompts (the negatives of the grounded enrichment test)."""

SOURCES = ("benchmark", "builtin", "organisms")
"""Named grounding sources (anything else in ``categories.grounding`` is a path)."""


def is_organism_spec(spec: Any) -> bool:
    """True for ``organisms://SIZE/NAME`` and for a directory of a built organism (its parent holds organism.json)."""
    if spec is None:
        return False
    s = str(spec)
    if s.startswith("organisms://"):
        return True
    p = Path(s).expanduser()
    return p.is_dir() and (p.parent / "organism.json").exists()


def _organism_pair(config: Any) -> bool:
    models = getattr(config, "models", None)
    if models is None:
        return True
    specs = [getattr(models, k, None) for k in ("base", "finetuned")]
    if getattr(config, "design", "direct") == "anchored":
        specs.append(getattr(models, "anchor", None))
    return all(is_organism_spec(s) for s in specs if s is not None)


def grounding_source(config: Any) -> str:
    """``benchmark``, ``builtin``, ``organisms`` or the configured path (see the module docstring for the auto rule)."""
    chosen = getattr(getattr(config, "categories", None), "grounding", None)
    if chosen:
        return str(chosen)
    # no pair at all (tests, `lm-diff plugins`): the demo's set
    return "organisms" if _organism_pair(config) else "benchmark"


def organism_family(config: Any) -> str:
    """``natural`` when every model of the pair is a natural-family organism, else ``demo``."""
    models = getattr(config, "models", None)
    if models is None:
        return "demo"
    specs = [getattr(models, k, None) for k in ("base", "finetuned")]
    if getattr(config, "design", "direct") == "anchored":
        specs.append(getattr(models, "anchor", None))
    specs = [s for s in specs if s is not None]
    return "natural" if specs and all(is_natural_spec(s) for s in specs) else "demo"


def validate_prompts(prompts: Sequence[Mapping[str, Any]], taxonomy: Any, neutral: str = NEUTRAL, where: str = "grounding prompts") -> None:
    """Raise UserError naming the first prompt whose category is not in the taxonomy (or ``neutral``)."""
    names = set(category_names(taxonomy))
    for i, p in enumerate(prompts):
        c = p.get("category")
        if c != neutral and c not in names:
            close = difflib.get_close_matches(str(c), sorted(names | {neutral}), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UserError(
                f"{where}: item {i} has category {c!r}, which is not in the taxonomy{hint} "
                f"(valid: {', '.join(sorted(names))}, or {neutral!r} for background prompts)"
            )


def load_grounding_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file of ``{"text": ..., "category": ...}`` rows; errors name the file and line."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: grounding prompt file not found; set categories.grounding to a JSONL of {{text, category}} rows")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not isinstance(row.get("category"), str):
            raise UserError(f"{path}:{n}: each line must be an object with string fields 'text' and 'category'")
        out.append({"text": row["text"], "category": row["category"]})
    if not out:
        raise UserError(f"{path}: no grounding prompts in the file")
    return out


@hookimpl
def lm_diff_grounding_prompts(config, taxonomy, tokenizer=None):
    """Labelled prompts ``[{"text", "category"}]``; category ``neutral`` marks background prompts."""
    source = grounding_source(config)
    if source not in SOURCES:
        resolved = config.resolve_path(source)
        prompts = load_grounding_jsonl(resolved)
        if taxonomy is not None:
            validate_prompts(prompts, taxonomy, where=str(resolved))
        return cap_per_category(prompts, getattr(config.categories, "grounding_per_category", None))
    if source == "benchmark":
        taxonomy = taxonomy if taxonomy is not None else get_taxonomy(config)
        return benchmark_grounding(config, taxonomy, tokenizer, organism_pair=_organism_pair(config))[0]
    if source == "builtin":
        prompts = builtin_prompts(tokenizer=tokenizer)
    else:
        make = natural_grounding_prompts if organism_family(config) == "natural" else organism_grounding_prompts
        prompts = [{"text": p["text"], "category": p["category"]} for p in make()]
    if taxonomy is not None:
        # The built-in sets cover the default taxonomy; a custom taxonomy keeps the categories it shares with it.
        names = set(category_names(taxonomy)) | {NEUTRAL}
        prompts = [p for p in prompts if p["category"] in names]
        if not any(p["category"] != NEUTRAL for p in prompts):
            # Nothing to contribute for this taxonomy; another plugin may ground it (the pipeline errors if none does).
            return []
    return cap_per_category(prompts, getattr(getattr(config, "categories", None), "grounding_per_category", None))
