"""Grounded category assignment (docs/method.md#grounding): latent -> category by enrichment on labelled prompts, no LLM.

For latent j and category c: a_j(p) = max over tokens of f_j on prompt p. AUROC_{j,c} = P[a_j(p) > a_j(p')] (+½ ties),
p ∈ P_c, p' ∈ P_0 (neutral prompts, label ``neutral``). One-sided Mann–Whitney p-values (category > neutral) are
Benjamini–Hochberg corrected across **all** latent × category pairs; j -> c is assigned iff AUROC ≥ ``auroc_min``,
q ≤ ``q`` and the **specificity** AUROC_rest_{j,c} ≥ ``specificity_min``, where AUROC_rest compares P_c with the pooled
prompts of the *other* labelled categories (one-vs-rest). Multi-label; latents with no assigned category are
``unassigned``.

Why specificity: enrichment against neutral text alone assigns a latent that fires on everything the labelled sets
share (the chat template, a common answer prefix) to every category at once. On the demo organisms two chat-format
latents were counted in 10 of 11 categories, which inflated every category's count in the fine-tune-specific set.
A latent that genuinely serves two categories still passes: the rest pool is dominated by the other categories.

Speed: all latents of one category are tested at once (``stats.mannwhitney_auroc_columns``: scipy's
``mannwhitneyu(axis=0)``, normal approximation with tie correction and continuity correction), so 8k latents × 1k
prompts takes a few seconds. The exact MW test is not used: with hundreds of prompts the normal
approximation is accurate, and latents that never fire on either set are constant columns (AUROC 0.5, p = 1).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from lm_diff.categorize.prompts import NEUTRAL, load_grounding_jsonl, validate_prompts
from lm_diff.categorize.taxonomy import category_names, get_taxonomy
from lm_diff.diff.table import encode_batch, iter_store, progress_bar
from lm_diff.errors import UserError
from lm_diff.plugins.manager import hook
from lm_diff.stats import bh_qvalues, mannwhitney_auroc_columns

UNASSIGNED = "unassigned"

__all__ = [
    "NEUTRAL",
    "UNASSIGNED",
    "store_prompt_max_acts",
    "grounded_assign",
    "latent_labels",
    "grounding_prompts",
    "load_grounding_jsonl",
    "validate_prompts",
]


# ----------------------------------------------------------------------------------------------------------------------
# Max activations per prompt


def store_prompt_max_acts(
    cc: Any,
    store: Any,
    layer: Any,
    models: Sequence[int] = (0, 1),
    *,
    doc_ids: Optional[Sequence[int]] = None,
    latents: Optional[Sequence[int]] = None,
    split: str = "all",
    batch_size: int = 4096,
    exclude_template: bool = False,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Token-max activations per document streamed from a store: returns ``(doc_ids [P], max_acts_PL [P, L])``.

    ``doc_ids`` restricts to those documents (others are skipped; order kept as given); ``exclude_template`` ignores
    chat-template tokens (docs/method.md#template-tokens)."""
    L = cc.W_dec_LMD.shape[0] if latents is None else len(latents)
    idx = None if latents is None else torch.as_tensor(np.asarray(latents, dtype=np.int64))
    want = None if doc_ids is None else np.asarray(doc_ids, dtype=np.int64)
    rows: dict[int, int] = {} if want is None else {int(d): i for i, d in enumerate(want)}
    buf = np.zeros((len(rows) if want is not None else 0, L), dtype=np.float32)
    with progress_bar(progress, "document max activations", None) as advance:
        for acts, meta in iter_store(store, layer, models, batch_size, split=split):
            docs = np.asarray(meta["doc_id"]).astype(np.int64).reshape(-1)
            keep = np.ones(len(docs), bool)
            if want is not None:
                keep &= np.isin(docs, want)
            if exclude_template and meta.get("template") is not None:
                keep &= ~np.asarray(meta["template"]).astype(bool).reshape(-1)
            if not keep.any():
                advance(len(docs))
                continue
            _, f = encode_batch(cc, acts[torch.as_tensor(keep)])
            if idx is not None:
                f = f[:, idx.to(f.device)]
            f = f.float().cpu().numpy()
            d = docs[keep]
            if want is None:
                for doc in np.unique(d):
                    if int(doc) not in rows:
                        rows[int(doc)] = len(rows)
                if len(rows) > len(buf):
                    buf = np.concatenate([buf, np.zeros((max(len(rows) - len(buf), len(buf)), L), np.float32)])
            r = np.fromiter((rows[int(x)] for x in d), dtype=np.int64, count=len(d))
            np.maximum.at(buf, r, f)
            advance(len(docs))
    ids = np.fromiter(rows.keys(), dtype=np.int64, count=len(rows))
    order = np.fromiter(rows.values(), dtype=np.int64, count=len(rows))
    return ids, buf[order]


# ----------------------------------------------------------------------------------------------------------------------
# Assignment


def grounded_assign(
    max_acts_PL: Any,
    prompt_categories: Sequence[Any],
    taxonomy: Any,
    auroc_min: float = 0.75,
    q: float = 0.05,
    *,
    specificity_min: float = 0.0,
    latents: Optional[Sequence[int]] = None,
    neutral: str = NEUTRAL,
    progress: bool = False,
) -> pd.DataFrame:
    """Grounded enrichment of every latent × category pair (docs/method.md#grounding).

    ``max_acts_PL``: [P, L] token-max activations; ``prompt_categories``: P labels, each a category name, ``neutral``
    (background P_0), or a list of names (a prompt in several categories). ``taxonomy``: Category objects or names; a
    prompt label outside taxonomy ∪ {neutral} raises UserError. Categories without prompts are skipped.
    ``latents`` names the L columns (default 0..L-1).

    Returns a long DataFrame, one row per (latent, category): ``latent, category, n_pos, n_neg, auroc, lor`` (log
    odds ratio of firing, Haldane ½), ``p`` (one-sided MW), ``q`` (BH over all pairs), ``auroc_rest`` (category vs
    the other categories' prompts; NaN when there are none), ``assigned`` (auroc ≥ auroc_min ∧ q ≤ q ∧
    auroc_rest ≥ specificity_min; ``specificity_min`` ≤ 0.5 switches the last test off). Use :func:`latent_labels`
    for per-latent label lists.
    """
    X = np.asarray(max_acts_PL, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"max_acts_PL must be [prompts, latents], got shape {X.shape}")
    P, L = X.shape
    if len(prompt_categories) != P:
        raise ValueError(f"{len(prompt_categories)} prompt categories for {P} prompts")
    names = category_names(taxonomy)
    labels = [[c] if isinstance(c, str) else list(c) for c in prompt_categories]
    validate_prompts([{"category": c} for ls in labels for c in ls], names, neutral=neutral)
    lat = np.arange(L) if latents is None else np.asarray(latents)
    neg_mask = np.array([neutral in ls for ls in labels])
    if not neg_mask.any():
        raise UserError(f"grounding prompts contain no '{neutral}' prompts; add background prompts labelled '{neutral}'")
    neg = X[neg_mask]
    fires_neg = (neg > 0).sum(0)
    frames = []
    cats = [c for c in names if any(c in ls for ls in labels)]
    with progress_bar(progress, "grounded enrichment", len(cats)) as advance:
        for c in cats:
            pos_mask = np.array([c in ls for ls in labels])
            pos = X[pos_mask]
            auroc, p = mannwhitney_auroc_columns(pos, neg, alternative="greater")
            rest_mask = ~pos_mask & ~neg_mask
            auroc_rest = (mannwhitney_auroc_columns(pos, X[rest_mask], alternative="greater")[0] if rest_mask.any()
                          else np.full(L, np.nan))
            k1, k0 = (pos > 0).sum(0), fires_neg
            n1, n0 = len(pos), len(neg)
            lor = np.log((k1 + 0.5) * (n0 - k0 + 0.5) / ((n1 - k1 + 0.5) * (k0 + 0.5)))
            frames.append(pd.DataFrame({"latent": lat, "category": c, "n_pos": n1, "n_neg": n0, "auroc": auroc, "lor": lor, "p": p,
                                       "auroc_rest": auroc_rest}))
            advance(1)
    if not frames:
        return pd.DataFrame(columns=["latent", "category", "n_pos", "n_neg", "auroc", "lor", "p", "auroc_rest", "q",
                                     "assigned"])
    df = pd.concat(frames, ignore_index=True)
    df["q"] = bh_qvalues(df["p"].to_numpy())
    specific = (df["auroc_rest"].fillna(1.0) >= specificity_min) if specificity_min > 0.5 else True
    df["assigned"] = (df["auroc"] >= auroc_min) & (df["q"] <= q) & specific
    df.attrs.update({"auroc_min": auroc_min, "q": q, "specificity_min": specificity_min,
                     "n_neutral": int(neg_mask.sum())})
    return df


def latent_labels(assign: pd.DataFrame, latents: Optional[Sequence[int]] = None) -> dict[int, list[str]]:
    """Per-latent assigned categories (sorted by AUROC, best first), ``["unassigned"]`` for latents without one.
    ``latents`` lists the latents to include (default: all in ``assign``)."""
    a = assign[assign["assigned"].astype(bool)].sort_values(["latent", "auroc"], ascending=[True, False])
    got = a.groupby("latent")["category"].apply(list).to_dict()
    ids = assign["latent"].unique() if latents is None else latents
    return {int(j): got.get(j, [UNASSIGNED]) for j in ids}


# ----------------------------------------------------------------------------------------------------------------------
# Grounding prompts


def grounding_prompts(config: Any = None, taxonomy: Any = None, tokenizer: Any = None) -> list[dict[str, Any]]:
    """All labelled grounding prompts from the ``lm_diff_grounding_prompts`` hooks (built-in: the configured JSONL, the
    real-language set rendered with ``tokenizer``'s chat template, or the organisms' set), concatenated."""
    if taxonomy is None:
        taxonomy = get_taxonomy(config)
    out: list[dict[str, Any]] = []
    for result in hook().lm_diff_grounding_prompts(config=config, taxonomy=taxonomy, tokenizer=tokenizer):
        out.extend(result or [])
    return out
