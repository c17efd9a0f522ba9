"""Built-in grounding prompts (hook ``lm_diff_grounding_prompts``): the JSONL named by ``categories.grounding``, or
the generated set of ``lm_diff.organisms.grounding_prompts()``. Categories are checked against the taxonomy: an
unknown category in the user's JSONL is an error; the built-in set keeps the categories the taxonomy has."""

from __future__ import annotations

from lm_diff.errors import UserError
from lm_diff.plugins.hookspecs import hookimpl


@hookimpl
def lm_diff_grounding_prompts(config, taxonomy):
    """Labelled prompts ``[{"text", "category"}]``; category ``neutral`` marks background prompts."""
    from lm_diff.categorize.grounding import load_grounding_jsonl, validate_prompts

    path = getattr(getattr(config, "categories", None), "grounding", None)
    if path:
        resolved = config.resolve_path(path)
        prompts = load_grounding_jsonl(resolved)
        where = str(resolved)
    else:
        try:
            try:
                from lm_diff.organisms import grounding_prompts
            except ImportError:
                from lm_diff.organisms.bench import grounding_prompts
        except ImportError as exc:
            raise UserError(
                "no grounding prompts: categories.grounding is not set and the built-in set "
                f"(lm_diff.organisms.grounding_prompts) is unavailable ({exc}); set categories.grounding to a JSONL file"
            ) from None
        prompts = [{"text": p["text"], "category": p["category"]} for p in grounding_prompts()]
        where = "built-in grounding prompts (lm_diff.organisms)"
        if taxonomy is not None:
            # The built-in set covers the default taxonomy; a custom taxonomy keeps the categories it shares with it.
            names = {c if isinstance(c, str) else c.name for c in taxonomy} | {"neutral"}
            prompts = [p for p in prompts if p["category"] in names]
            if not any(p["category"] != "neutral" for p in prompts):
                # Nothing to contribute for this taxonomy; another plugin may ground it (the pipeline errors if none does).
                return []
    if taxonomy is not None:
        validate_prompts(prompts, taxonomy, where=where)
    return prompts
