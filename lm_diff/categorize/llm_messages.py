"""The LLM annotator's chat messages and the parsers of their answers (used by :mod:`lm_diff.categorize.annotate`).

Explain: activating examples with active tokens marked ``<<tok>>`` and activations scaled 0-10 (as in Delphi); the
answer is JSON ``{"explanation", "category"}`` with the category in the taxonomy or ``none``. Detect: a numbered list
of plain-text examples; the answer is a JSON list of 0/1. Parsers forgive code fences, near-JSON and case.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping, Optional, Sequence

NONE = "none"
"""The category answered when no taxonomy category fits."""

EXPLAIN_SYSTEM = (
    "You are a meticulous interpretability researcher explaining a latent feature of a language model. "
    "You are shown text examples on which the feature activates. Tokens where it activates are marked <<like this>>, "
    "and each example lists the activating tokens with their activation strength on a 0-10 scale. "
    "Find what the marked tokens and their contexts have in common and write a concise explanation "
    "(one sentence, no more than 25 words; no need to mention the markers). "
    "Then pick the capability category that best fits the feature, or \"none\" if no category fits.\n\n"
    "Categories:\n{categories}\n\n"
    'Answer with JSON only, exactly in this form: {{"explanation": "<your explanation>", "category": "<category name or none>"}}'
)

DETECT_SYSTEM = (
    "You are an intelligent and meticulous linguistics researcher. You are given an explanation of a latent feature of a "
    "language model and a numbered list of text examples. For each example, decide whether the feature, as described "
    "by the explanation, is present in it (1) or not (0). Some examples contain the feature and some do not.\n\n"
    "Answer with JSON only: a list with exactly one 0 or 1 per example, in order, e.g. [1, 0, 0, 1]."
)


# ----------------------------------------------------------------------------------------------------------------------
# Prompts


def _scaled(acts: Sequence[float], max_act: float) -> list[int]:
    if max_act <= 0:
        return [0 for _ in acts]
    return [int(round(10 * max(a, 0.0) / max_act)) for a in acts]


def format_activating(example: Mapping[str, Any], max_act: Optional[float] = None) -> str:
    """The example text with runs of activating tokens (act > 0) wrapped in ``<<…>>`` (leading whitespace kept outside),
    followed by the list of activating tokens with activations scaled 0–10 relative to ``max_act``."""
    tokens, acts = example.get("tokens"), example.get("acts")
    if not tokens or not acts or len(tokens) != len(acts):
        return str(example.get("text", ""))
    acts = [float(a) for a in acts]
    max_act = max_act if max_act and max_act > 0 else max(max(acts), 0.0)
    out: list[str] = []
    run: list[str] = []

    def close_run() -> None:
        if run:
            joined = "".join(run)
            stripped = joined.lstrip()
            out.append(joined[: len(joined) - len(stripped)] + "<<" + stripped + ">>")
            run.clear()

    for tok, a in zip(tokens, acts):
        if a > 0:
            run.append(str(tok))
        else:
            close_run()
            out.append(str(tok))
    close_run()
    scaled = _scaled(acts, max_act)
    listed = ", ".join(f'("{str(t).strip()}", {s})' for t, a, s in zip(tokens, acts, scaled) if a > 0)
    return "".join(out) + ("\nActivations: " + listed if listed else "")


def example_max_act(example: Mapping[str, Any]) -> float:
    acts = example.get("acts") or []
    return max((float(a) for a in acts), default=0.0)


def explain_messages(train: Sequence[Mapping[str, Any]], taxonomy: Sequence[Any]) -> list[dict[str, str]]:
    """Chat messages asking for a concise explanation and a category ∈ taxonomy ∪ {none}."""
    cats = "\n".join(f"- {c.name}: {c.description}" for c in taxonomy) + f"\n- {NONE}: none of the above fits"
    max_act = max((example_max_act(e) for e in train), default=0.0)
    body = "\n\n".join(f"Example {i + 1}: {format_activating(e, max_act)}" for i, e in enumerate(train))
    return [
        {"role": "system", "content": EXPLAIN_SYSTEM.format(categories=cats)},
        {"role": "user", "content": body},
    ]


def detect_messages(explanation: str, texts: Sequence[str]) -> list[dict[str, str]]:
    """Chat messages asking which of the numbered plain-text examples match the explanation."""
    body = f"Explanation: {explanation}\n\n" + "\n\n".join(f"Example {i + 1}: {t}" for i, t in enumerate(texts))
    body += f"\n\nAnswer with a JSON list of exactly {len(texts)} values (0 or 1)."
    return [{"role": "system", "content": DETECT_SYSTEM}, {"role": "user", "content": body}]


# ----------------------------------------------------------------------------------------------------------------------
# Parsing


def _json_candidates(text: str, open_ch: str, close_ch: str) -> list[str]:
    """Substrings from each ``open_ch`` to each later ``close_ch`` (longest first), after stripping code fences."""
    text = re.sub(r"```(?:json)?", "", text or "")
    starts = [i for i, ch in enumerate(text) if ch == open_ch]
    ends = [i for i, ch in enumerate(text) if ch == close_ch]
    out = []
    for s in starts:
        for e in reversed(ends):
            if e > s:
                out.append(text[s : e + 1])
    return out[:50]


def normalise_category(raw: Any, names: Sequence[str]) -> Optional[str]:
    """Map an answered category to a taxonomy name or ``none`` (case, spaces and hyphens forgiven); None if invalid."""
    if not isinstance(raw, str):
        return None
    key = re.sub(r"[\s\-]+", "_", raw.strip().strip("\"'`.").lower())
    if key in {NONE, "null", "n/a", "na", "other", "unknown"}:
        return NONE
    return key if key in names else None


def parse_explanation(text: str, names: Sequence[str]) -> tuple[Optional[str], Optional[str], str]:
    """Parse an explainer answer into ``(explanation, category, problem)``.

    ``explanation`` is None when none could be read; ``category`` is None when missing or not in ``names`` ∪ {none};
    ``problem`` is an empty string for a valid answer, else a short description used in the corrective retry.
    """
    obj = None
    for cand in _json_candidates(text, "{", "}"):
        try:
            val = json.loads(cand)
        except (ValueError, RecursionError):
            continue
        if isinstance(val, dict):
            obj = val
            break
    if obj is None:
        # Tolerate near-JSON: "explanation": "...", "category": "..." with broken surrounding syntax.
        m_e = re.search(r'"?explanation"?\s*[:=]\s*"([^"]*)"', text or "", re.I)
        m_c = re.search(r'"?category"?\s*[:=]\s*"?([A-Za-z_\- ]+)"?', text or "", re.I)
        if not m_e:
            return None, None, "the answer was not a JSON object"
        obj = {"explanation": m_e.group(1), "category": m_c.group(1) if m_c else None}
    lower = {str(k).lower(): v for k, v in obj.items()}
    expl = lower.get("explanation")
    expl = " ".join(expl.split()) if isinstance(expl, str) and expl.strip() else None
    cat = normalise_category(lower.get("category"), names)
    if expl is None:
        return None, cat, 'the JSON object has no non-empty "explanation"'
    if cat is None:
        return expl, None, f'"category" must be one of: {", ".join(list(names) + [NONE])}; got {lower.get("category")!r}'
    return expl, cat, ""


def parse_detection(text: str, n: int) -> Optional[list[int]]:
    """Parse a scorer answer into ``n`` 0/1 labels: a JSON list of 0/1/true/false (possibly inside an object), else None."""
    for cand in _json_candidates(text, "[", "]"):
        try:
            val = json.loads(cand)
        except (ValueError, RecursionError):
            continue
        if isinstance(val, list) and len(val) == n:
            out = []
            for v in val:
                if isinstance(v, bool):
                    out.append(int(v))
                elif isinstance(v, (int, float)) and v in (0, 1):
                    out.append(int(v))
                elif isinstance(v, str) and v.strip().lower() in ("0", "1", "yes", "no", "true", "false"):
                    out.append(1 if v.strip().lower() in ("1", "yes", "true") else 0)
                else:
                    out = None
                    break
            if out is not None:
                return out
    return None
