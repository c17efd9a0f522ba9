"""Which categories the fine-tune changed, either way: the latent half's headline (docs/method.md#category-change).

The model-specific latents of both directions, S ∪ T, are tested against the live shared latents (firing, with
0.1 < Δnorm < 0.9) with the share ratio's machinery (``shift.pooled_category_shift``: counts pooled over seeds,
clusters of matched latents as the unit, cluster label-permutation p) but one-sided: is category c's share of the
model-specific set larger than its share of the shared set? Shares are compositional, so a depleted category is only
the complement of the enriched ones and the test has one direction. It has no sign with respect to A and B: a
fine-tune that learns a broken format gains B-specific latents on that format's prompts, so it says which categories
changed, not which way (the report reads the direction off the linked benchmark and perplexity gaps; the seed
paper's S-vs-T share ratio stays next to it). BH runs over the tested (not insufficient) categories; the interval is
one-sided like the test, the lower end of the cluster bootstrap interval at the FCR level with the Katz hull (an
upper end would only restate the complement), and ``change_mds`` the smallest enrichment the run could
have detected (docs/method.md#minimum-detectable-shift), as for the share ratio.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import pandas as pd

from lm_diff.categorize.shift import pooled_category_shift
from lm_diff.config import StatsConfig
from lm_diff.schema import (
    CATEGORY,
    CHANGE_CI_HIGH,
    CHANGE_CI_LOW,
    CHANGE_INSUFFICIENT,
    CHANGE_MDS,
    CHANGE_P,
    CHANGE_Q,
    CHANGE_RATIO,
    N_SHARED,
    N_SPECIFIC,
)

__all__ = ["category_change", "live_shared", "SHARED_DELTA"]

SHARED_DELTA = (0.1, 0.9)
"""Δnorm bounds (exclusive) of a shared latent: the comparison set of ``category_change``."""

# The shared set holds most live latents, so the cluster bootstrap costs far more here than for S vs T; 2000
# resamples put the percentile interval's Monte-Carlo error well under its width.
_BOOTSTRAP = 2000


def live_shared(table: pd.DataFrame, bounds: tuple[float, float] = SHARED_DELTA) -> list[int]:
    """The latents of a crosscoder's latent table that fire (``freq`` > 0, else not ``dead``) with
    bounds[0] < Δnorm < bounds[1], sorted."""
    live = table["freq"].to_numpy() > 0 if "freq" in table else ~table["dead"].to_numpy(bool)
    d = table["delta_norm"].to_numpy(dtype=float)
    ok = live & (d > bounds[0]) & (d < bounds[1])
    return sorted(int(j) for j in table["latent"].to_numpy()[ok])


def category_change(
    per_seed: Sequence[tuple[Any, Any]],
    clusters: Sequence[tuple[Sequence[int], Sequence[int]]],
    taxonomy: Any,
    stats_cfg: Any = None,
    *,
    include_unassigned: bool = True,
) -> pd.DataFrame:
    """Per category: is it enriched among the model-specific latents against the live shared ones?

    ``per_seed``: [(labels of the seed's specific latents S ∪ T, labels of its live shared latents)]; ``clusters``:
    [(their cluster ids)] per seed in the same order (``controls.seed_clusters``; a latent keeps its id whichever set
    it is in). Returns one row per category (taxonomy order, then ``unassigned``): ``category``, ``change_ratio``
    (share in the specific set / share in the shared set − 1), ``change_ci_low`` (the lower end of its two-sided
    interval at the FCR level, so conservative as a one-sided bound; ``change_ci_high`` is inf, the interval being
    one-sided like the test), ``change_mds`` (the smallest ratio − 1 detectable upward with ``stats.power``; NaN:
    none), ``change_p`` (one-sided cluster label-permutation p,
    alternative "greater"), ``change_q`` (BH over the tested categories; NaN when insufficient or unassigned),
    ``n_specific``, ``n_shared`` (pooled counts over seeds) and ``change_insufficient`` (fewer than
    ``stats.min_count`` clusters carry the category)."""
    cfg = stats_cfg if stats_cfg is not None else StatsConfig()
    if dataclasses.is_dataclass(cfg):
        cfg = dataclasses.replace(cfg, bootstrap=min(int(cfg.bootstrap), _BOOTSTRAP))
    df = pooled_category_shift(per_seed, clusters, taxonomy, cfg, include_unassigned=include_unassigned,
                               alternative="greater")
    out = pd.DataFrame({
        CATEGORY: df["category"],
        CHANGE_RATIO: df["share_ratio"].astype(float),
        CHANGE_CI_LOW: df["share_ratio_lo"].astype(float),
        CHANGE_CI_HIGH: np.inf,  # one-sided: a depleted category is only the complement of the enriched ones
        CHANGE_P: df["p"].astype(float),
        CHANGE_Q: df["q"].astype(float),
        CHANGE_MDS: df["mds_up"].astype(float),
        N_SPECIFIC: df["n_S"].astype(float),
        N_SHARED: df["n_T"].astype(float),
        CHANGE_INSUFFICIENT: df["insufficient"].astype(bool),
    })
    out.attrs.update({"N_specific": float(df.attrs.get("N_S", np.nan)), "N_shared": float(df.attrs.get("N_T", np.nan)),
                      "clusters": df.attrs.get("clusters"), "seeds": df.attrs.get("seeds"),
                      "ci_level": df.attrs.get("ci_level"), "power": df.attrs.get("power"),
                      "method": "specific (S ∪ T) vs live shared latents; one-sided cluster label-permutation p"})
    return out
