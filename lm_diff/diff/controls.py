"""Validation controls (docs/method.md#identity-control, #random-init-null, #seed-matching, #permutation-null): seed matching, identity control, random-init null, permutation null.

- :func:`match_decoders`: Hungarian matching (``scipy.optimize.linear_sum_assignment``) of the latents of two
  crosscoders by cosine similarity of the concatenated decoders [d^A; d^B].
- :func:`seed_reproducibility`: per latent of a reference seed, the matched cosine in every other seed, the best
  (unconstrained) cosine, and ``reproducibility`` = mean matched cosine over the other seeds.
- :func:`identity_control_summary`: exclusive counts of an identity crosscoder (A, A) before and after Latent Scaling;
  the control passes when the specific count is at most ``ControlsConfig.identity_max_fraction`` of live latents.
- :func:`random_init_null`: Δ / cos / tag distributions of random-init crosscoders (null for the Δ histogram).
- :func:`category_permutation_null`: label-permutation null for category shifts (wraps ``stats``).

Matching cost: an L × L cosine matrix (float32) and an O(L³) assignment; fine for L ≲ 16k on a CPU (≈ 1 GB for 16k).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from lm_diff.diff.table import TAG_A_ONLY, TAG_B_ONLY, TAGS, _decoder_LMD, decoder_stats
from lm_diff.stats import permutation_shift_null

__all__ = [
    "concat_decoders",
    "match_decoders",
    "seed_reproducibility",
    "seed_clusters",
    "identity_control_summary",
    "random_init_null",
    "category_permutation_null",
]


def concat_decoders(cc: Any) -> np.ndarray:
    """Unit-normalised concatenated decoders [L, M·D] in the normalised space (rows of zero norm stay zero).
    ``cc``: crosscoder or [L, M, D]."""
    W = _decoder_LMD(cc)
    W = W.float().reshape(W.shape[0], -1).numpy()
    n = np.linalg.norm(W, axis=1, keepdims=True)
    return W / np.where(n > 0, n, 1.0)


def match_decoders(cc_a: Any, cc_b: Any) -> pd.DataFrame:
    """Hungarian matching maximising total cosine of [d^A; d^B] between two crosscoders (or decoder tensors).

    Returns one row per latent of ``cc_a``: ``latent, match`` (latent of ``cc_b``, −1 if unmatched because ``cc_b``
    is smaller), ``cos`` (matched cosine), ``best`` (latent of ``cc_b`` with the highest cosine), ``best_cos``."""
    A, B = concat_decoders(cc_a), concat_decoders(cc_b)
    if A.shape[1] != B.shape[1]:
        raise ValueError(f"decoders differ in size: {A.shape[1]} vs {B.shape[1]} (models × d_model)")
    C = A @ B.T  # [La, Lb]
    rows, cols = linear_sum_assignment(C, maximize=True)
    match = np.full(len(A), -1, dtype=np.int64)
    match[rows] = cols
    cos = np.full(len(A), np.nan)
    cos[rows] = C[rows, cols]
    best = C.argmax(1)
    return pd.DataFrame({"latent": np.arange(len(A)), "match": match, "cos": cos, "best": best, "best_cos": C[np.arange(len(A)), best]})


def seed_reproducibility(crosscoders: Sequence[Any], reference: int = 0, seeds: Optional[Sequence[Any]] = None) -> pd.DataFrame:
    """Per-latent reproducibility of crosscoder ``reference`` against every other crosscoder (one per seed).

    Columns: ``latent``, per other seed s ``match_s{s}``, ``cos_s{s}`` (Hungarian-matched cosine) and
    ``best_cos_s{s}`` (max cosine over all its latents), then ``reproducibility`` (mean matched cosine over the other
    seeds) and ``min_cos``. With a single crosscoder there is nothing to compare (NaN reproducibility)."""
    seeds = list(seeds) if seeds is not None else list(range(len(crosscoders)))
    L = concat_decoders(crosscoders[reference]).shape[0]
    df = pd.DataFrame({"latent": np.arange(L)})
    matched = []
    for i, cc in enumerate(crosscoders):
        if i == reference:
            continue
        m = match_decoders(crosscoders[reference], cc)
        s = seeds[i]
        df[f"match_s{s}"] = m["match"]
        df[f"cos_s{s}"] = m["cos"]
        df[f"best_cos_s{s}"] = m["best_cos"]
        matched.append(m["cos"].to_numpy())
    if matched:
        M = np.stack(matched)
        df["reproducibility"] = M.mean(0)
        df["min_cos"] = M.min(0)
    else:
        df["reproducibility"] = np.nan
        df["min_cos"] = np.nan
    return df


def seed_clusters(crosscoders: Sequence[Any], min_cos: float = 0.7) -> list[np.ndarray]:
    """Cluster ids of the latents of several crosscoders (one per seed): latents Hungarian-matched between any two
    seeds with cosine ≥ ``min_cos`` on [d^A; d^B] share a cluster (union-find over every pair of seeds); the others
    are singletons. Returns one int array [L_s] per crosscoder; ids are dense and comparable across seeds."""
    sizes = [concat_decoders(cc).shape[0] for cc in crosscoders]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    parent = np.arange(int(offsets[-1]))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    for a in range(len(crosscoders)):
        for b in range(a + 1, len(crosscoders)):
            m = match_decoders(crosscoders[a], crosscoders[b])
            ok = (m["match"].to_numpy() >= 0) & (m["cos"].to_numpy() >= min_cos)
            for i, j in zip(m["latent"].to_numpy()[ok], m["match"].to_numpy()[ok]):
                ri, rj = find(int(offsets[a] + i)), find(int(offsets[b] + j))
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([find(i) for i in range(len(parent))])
    _, dense = np.unique(roots, return_inverse=True)
    return [dense[offsets[s]:offsets[s + 1]] for s in range(len(crosscoders))]


def identity_control_summary(table: pd.DataFrame, scaling: Optional[pd.DataFrame] = None, controls_cfg: Any = None) -> dict[str, Any]:
    """Summary of an identity crosscoder (A, A): Δ-only exclusive counts, counts left after Latent Scaling, pass/fail.

    ``table``: its per-latent table (``diff.latent_table`` / ``decoder_stats``); ``scaling``: its ``latent_scaling``
    output (None = judge on Δ alone). Passes when specific (or Δ-exclusive, without scaling) latents ≤
    ``identity_max_fraction`` × live latents."""
    frac = float(getattr(controls_cfg, "identity_max_fraction", 0.005))
    live = ~table["dead"].to_numpy(bool) if "dead" in table else np.ones(len(table), bool)
    n_live = int(live.sum())
    tags = table["tag"].to_numpy()
    out: dict[str, Any] = {
        "n_latents": int(len(table)),
        "n_live": n_live,
        "n_b_only_delta": int(((tags == TAG_B_ONLY) & live).sum()),
        "n_a_only_delta": int(((tags == TAG_A_ONLY) & live).sum()),
    }
    if scaling is not None and len(scaling):
        spec = scaling[scaling["specific"].astype(bool)]
        out["n_b_specific"] = int((spec["direction"] == "B").sum())
        out["n_a_specific"] = int((spec["direction"] == "A").sum())
        n_excl = out["n_b_specific"] + out["n_a_specific"]
    else:
        out["n_b_specific"] = out["n_a_specific"] = None
        n_excl = out["n_b_only_delta"] + out["n_a_only_delta"]
    out["n_exclusive"] = n_excl
    out["max_allowed"] = frac * n_live
    out["passed"] = bool(n_excl <= frac * n_live)
    return out


def random_init_null(make_crosscoder: Callable[[int], Any], seeds: Sequence[int] = (0,), cfg: Any = None) -> dict[str, Any]:
    """Null distributions from random-init crosscoders: ``make_crosscoder(seed)`` returns an untrained crosscoder
    (e.g. ``lambda s: CrossCoder(d, 2, L, seed=s)``) or a decoder tensor.

    Returns ``{"table": decoder_stats rows of every seed (with a ``seed`` column), "tag_counts": {tag: mean count},
    "delta_quantiles": {q: value}}``. Note W_dec = W_encᵀ init is identical across models, so a random-init
    crosscoder has Δ = 0.5 for every latent unless the init differs per model: the null then says that any
    exclusive latent is learned, not an init artefact."""
    frames = []
    for s in seeds:
        t = decoder_stats(make_crosscoder(s), cfg)
        t.insert(0, "seed", s)
        frames.append(t)
    table = pd.concat(frames, ignore_index=True)
    counts = table.groupby("seed")["tag"].value_counts().unstack(fill_value=0).reindex(columns=list(TAGS), fill_value=0)
    qs = [0.001, 0.01, 0.05, 0.5, 0.95, 0.99, 0.999]
    return {
        "table": table,
        "tag_counts": {k: float(v) for k, v in counts.mean(axis=0).items()},
        "delta_quantiles": {q: float(v) for q, v in zip(qs, np.quantile(table["delta_norm"], qs))},
    }


def category_permutation_null(S_PC: np.ndarray, T_PC: np.ndarray, stats_cfg: Any = None) -> dict[str, np.ndarray]:
    """Label-permutation null for category shifts with ``StatsConfig.permutations`` permutations (docs/method.md#permutation-null)."""
    return permutation_shift_null(
        S_PC, T_PC, n_perm=int(getattr(stats_cfg, "permutations", 10_000)), seed=int(getattr(stats_cfg, "seed", 0))
    )
