"""Latent Scaling (docs/method.md#latent-scaling): closed-form β per model from streamed sufficient statistics, ratios ν, selection.

For latent j, fix a direction d (d_j^B for B-only candidates, d_j^A for A-only candidates) and fit one scalar per model
m and target y^m, using the tokens where f_j(x) ≠ 0 (tokens with f_j = 0 add nothing to either sum):

    β_j^m = dᵀ Σ_x f_j(x) y^m(x) / (‖d‖² Σ_x f_j(x)²)

Targets: ``r`` reconstruction y = x̂^m; ``eps`` error y = x^m − x̂^m + f_j(x) d_j^m (the error with latent j's own
contribution for model m added back); ``act`` activation y = x^m; ``act_nb`` activation without decoder bias
y = x^m − b_dec^m. Only the projections dᵀy are accumulated (Σ f·dᵀy and Σ f²), so memory is O(latents), not
O(latents × d_model). Everything is computed in the crosscoder's working space (``diff.encode_batch``/``decode_batch``: the normalised
training space, so ν is consistent with Δ; for a crosscoder with folded normalisation, the raw space).

Ratios: for direction B (B-only candidates) ν = β_A / β_B (A in the numerator, the code's ``beta_ratio``); mirrored
for direction A (A-only candidates): ν = β_B / β_A. So in both cases ν ≈ 0 means "the other model does not have it".

- ν^ε high: the other model's error still contains the direction when the latent fires (Complete Shrinkage).
- ν^r high: the other model reconstructs the direction through other latents (Latent Decoupling).
- ``stable``: ν^ε and ν^r both inside ``DiffConfig.nu_stable`` (default [−0.1, 2]).
- ``specific`` (B rows): Δ ≥ fine_tune_only ∧ ν^ε < nu_eps_max ∧ ν^r < nu_r_max; (A rows): Δ ≤ base_only ∧ same ν
  thresholds. With ``DiffConfig.drop_unstable`` unstable rows are never specific.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from lm_diff.diff import device as xdev
from lm_diff.diff.table import (
    TAG_SHARED,
    decode_batch,
    decoder_stats,
    encode_batch,
    iter_store,
    progress_bar,
    store_tokens,
)

TARGETS = ("r", "eps", "act", "act_nb")
ROLE_B = "B-candidate"
ROLE_A = "A-candidate"
ROLE_BASELINE = "baseline"

__all__ = ["TARGETS", "ScalingStats", "latent_scaling", "scaling_rows", "select_specific", "baseline_latents"]


class ScalingStats:
    """Streaming sufficient statistics for Latent Scaling of K (latent, direction) rows.

    ``latents``: [K] latent indices; ``directions``: [K] crosscoder model positions (0 = A, 1 = B) whose decoder vector
    is the direction d. Call :meth:`update` with (x_BMD, f_BL, xhat_BMD) batches, then :meth:`betas`.
    """

    def __init__(self, W_dec_LMD: torch.Tensor, b_dec_MD: Optional[torch.Tensor], latents: Sequence[int],
                 directions: Sequence[int], device: Any = "cpu"):
        self.dev = torch.device(device)   # where the statistics accumulate (batches are moved here)
        W = W_dec_LMD.detach().float().to(self.dev)
        self.M = W.shape[1]
        self.idx = torch.tensor(np.array(latents, dtype=np.int64), device=self.dev)
        self.dirs = torch.tensor(np.array(directions, dtype=np.int64), device=self.dev)
        self.Dir_KD = W[self.idx, self.dirs]  # [K, D]
        self.dn2 = (self.Dir_KD.double() ** 2).sum(-1)  # ||d||^2
        # d . d_j^m for every model m: [M, K]
        self.dd_MK = torch.stack([(self.Dir_KD * W[self.idx, m]).sum(-1) for m in range(self.M)]).double()
        b = torch.zeros(self.M, W.shape[2], device=self.dev) if b_dec_MD is None else b_dec_MD.detach().float().to(self.dev)
        self.db_MK = (b @ self.Dir_KD.T).double()  # d . b_dec^m
        K = len(self.idx)
        self.num = {t: torch.zeros(self.M, K, dtype=torch.float64, device=self.dev) for t in TARGETS}
        self.sum_f = torch.zeros(K, dtype=torch.float64, device=self.dev)
        self.sum_f2 = torch.zeros(K, dtype=torch.float64, device=self.dev)
        self.n_active = torch.zeros(K, dtype=torch.float64, device=self.dev)
        self.n_tokens = 0

    def update(self, x_BMD: torch.Tensor, f_BL: torch.Tensor, xhat_BMD: torch.Tensor) -> None:
        x_BMD, f_BL, xhat_BMD = x_BMD.to(self.dev), f_BL.to(self.dev), xhat_BMD.to(self.dev)
        fK = f_BL[:, self.idx].float()
        if not bool((fK != 0).any()):
            self.n_tokens += fK.shape[0]
            return
        f64 = fK.double()
        f2 = (f64**2).sum(0)
        self.sum_f += f64.sum(0)
        self.sum_f2 += f2
        self.n_active += (fK != 0).double().sum(0)
        self.n_tokens += fK.shape[0]
        for m in range(self.M):
            Px = (x_BMD[:, m].float() @ self.Dir_KD.T).double()
            Ph = (xhat_BMD[:, m].float() @ self.Dir_KD.T).double()
            fx = (f64 * Px).sum(0)
            fh = (f64 * Ph).sum(0)
            self.num["r"][m] += fh
            self.num["eps"][m] += fx - fh + self.dd_MK[m] * f2
            self.num["act"][m] += fx
            self.num["act_nb"][m] += fx - self.db_MK[m] * f64.sum(0)

    def betas(self) -> dict[str, np.ndarray]:
        """``{target: beta [M, K]}``; NaN where the latent never fired or d = 0."""
        den = self.dn2 * self.sum_f2
        ok = den > 0
        out = {}
        for t in TARGETS:
            b = torch.where(ok, self.num[t] / torch.where(ok, den, torch.ones_like(den)), torch.full_like(self.num[t], float("nan")))
            out[t] = b.cpu().numpy()
        return out


def baseline_latents(table: pd.DataFrame, n: int, seed: int = 0, exclude: Sequence[int] = ()) -> np.ndarray:
    """``n`` random live shared-band latents (fewer if there are not enough), excluding ``exclude``."""
    ok = (table["tag"] == TAG_SHARED).to_numpy().copy()
    if "dead" in table:
        ok &= ~table["dead"].to_numpy(bool)
    pool = np.setdiff1d(table["latent"].to_numpy()[ok], np.asarray(exclude, dtype=np.int64))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False)) if len(pool) else pool


def _live(table: pd.DataFrame) -> np.ndarray:
    return ~table["dead"].to_numpy(bool).copy() if "dead" in table else np.ones(len(table), bool)


def scaling_rows(
    table: pd.DataFrame,
    cfg: Any = None,
    latents_B: Optional[Sequence[int]] = None,
    latents_A: Optional[Sequence[int]] = None,
    baseline: Any = None,
    seed: int = 0,
) -> pd.DataFrame:
    """The (latent, direction, role) rows to scale: B candidates (direction B; default Δ ≥ fine_tune_only, live),
    A candidates (direction A; default Δ ≤ base_only), and a random shared baseline (``baseline``: explicit latents,
    a count, or None = as many as the larger candidate set), scaled in both directions."""
    hi = getattr(cfg, "fine_tune_only", 0.9)
    lo = getattr(cfg, "base_only", 0.1)
    d = table["delta_norm"].to_numpy()
    live = _live(table)
    lat = table["latent"].to_numpy()
    B = np.asarray(lat[(d >= hi) & live] if latents_B is None else latents_B, dtype=np.int64)
    A = np.asarray(lat[(d <= lo) & live] if latents_A is None else latents_A, dtype=np.int64)
    if baseline is None or isinstance(baseline, (int, np.integer)):
        n = max(len(B), len(A)) if baseline is None else int(baseline)
        base = baseline_latents(table, n, seed=seed, exclude=np.concatenate([B, A]))
    else:
        base = np.asarray(baseline, dtype=np.int64)
    rows = [(int(j), 1, ROLE_B) for j in B] + [(int(j), 0, ROLE_A) for j in A]
    rows += [(int(j), 1, ROLE_BASELINE) for j in base] + [(int(j), 0, ROLE_BASELINE) for j in base]
    return pd.DataFrame(rows, columns=["latent", "dir", "role"])


def latent_scaling(
    cc: Any,
    store: Any,
    layer: Any,
    models: Sequence[int] = (0, 1),
    latents_B: Optional[Sequence[int]] = None,
    latents_A: Optional[Sequence[int]] = None,
    baseline: Any = None,
    tokens: Optional[int] = None,
    cfg: Any = None,
    *,
    table: Optional[pd.DataFrame] = None,
    split: str = "all",
    seed: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """Latent Scaling for B-only and A-only candidates plus a random shared baseline, in one streamed pass.

    ``table``: the per-latent table (``diff.latent_table``; weights-only ``decoder_stats`` when None, so candidates
    then include latents that never fire, which get NaN β). ``tokens``: tokens streamed (default
    ``cfg.scaling_tokens``, capped by the store). Returns one row per (latent, direction) with ``latent, role,
    direction`` ("B"/"A"), ``delta_norm, n_active, sum_f2``, ``beta_{t}_A, beta_{t}_B`` for t in r/eps/act/act_nb,
    ``nu_eps, nu_r, nu_act`` (β_other/β_direction), ``stable``, ``specific``; ``attrs`` hold n_tokens and thresholds.
    """
    if table is None:
        table = decoder_stats(cc, cfg)
    rows = scaling_rows(table, cfg, latents_B, latents_A, baseline, seed=seed)
    W = cc.W_dec_LMD.detach()
    b = getattr(cc, "b_dec_MD", None)
    stats = ScalingStats(W, None if b is None else b.detach(), rows["latent"], rows["dir"],
                         device=xdev.stats_device(xdev.crosscoder_device(cc)))   # where the crosscoder is
    if tokens is None:
        tokens = int(getattr(cfg, "scaling_tokens", 10_000_000))
    batch_size = int(getattr(cfg, "stream_batch_size", 4096))
    total = min(tokens, store_tokens(store, split) or tokens)
    if len(rows):
        with progress_bar(progress, f"latent scaling ({len(rows)} rows)", total) as advance:
            for acts, _ in iter_store(store, layer, models, batch_size, split=split, max_tokens=tokens, with_meta=False):
                x, f = encode_batch(cc, acts)
                xhat = decode_batch(cc, f)
                stats.update(x, f, xhat)
                advance(acts.shape[0])
    betas = stats.betas()
    out = rows.copy()
    out["direction"] = np.where(out["dir"] == 1, "B", "A")
    dmap = table.set_index("latent")["delta_norm"]
    out["delta_norm"] = dmap.reindex(out["latent"]).to_numpy()
    out["n_active"] = stats.n_active.cpu().numpy().astype(np.int64)
    out["sum_f2"] = stats.sum_f2.cpu().numpy()
    M = W.shape[1]
    ia, ib = (0, 1) if M >= 2 else (0, 0)
    for t in TARGETS:
        out[f"beta_{t}_A"] = betas[t][ia]
        out[f"beta_{t}_B"] = betas[t][ib]
    dirB = out["dir"].to_numpy() == 1
    with np.errstate(divide="ignore", invalid="ignore"):
        for t, name in (("eps", "nu_eps"), ("r", "nu_r"), ("act", "nu_act")):
            a, bb = out[f"beta_{t}_A"].to_numpy(), out[f"beta_{t}_B"].to_numpy()
            out[name] = np.where(dirB, a / bb, bb / a)
    out = out.drop(columns="dir")
    out = select_specific(out, cfg)
    out.attrs.update({"n_tokens": int(stats.n_tokens), "layer": str(layer), "models": list(models)})
    return out


def select_specific(df: pd.DataFrame, cfg: Any = None) -> pd.DataFrame:
    """Add ``stable`` and ``specific`` columns (thresholds from ``DiffConfig``, recorded in ``df.attrs``).

    B rows: specific ⇔ Δ ≥ fine_tune_only ∧ ν^ε < nu_eps_max ∧ ν^r < nu_r_max. A rows (mirrored ν): Δ ≤ base_only ∧
    the same ν thresholds. ``stable`` ⇔ both ν in nu_stable; with ``drop_unstable`` only stable rows are specific.
    Baseline rows are never specific. NaN ratios are neither stable nor specific."""
    hi = getattr(cfg, "fine_tune_only", 0.9)
    lo = getattr(cfg, "base_only", 0.1)
    e_max = getattr(cfg, "nu_eps_max", 0.2)
    r_max = getattr(cfg, "nu_r_max", 0.5)
    s_lo, s_hi = getattr(cfg, "nu_stable", [-0.1, 2.0])
    drop = bool(getattr(cfg, "drop_unstable", False))
    df = df.copy()
    ne, nr = df["nu_eps"].to_numpy(float), df["nu_r"].to_numpy(float)
    stable = (ne >= s_lo) & (ne <= s_hi) & (nr >= s_lo) & (nr <= s_hi)
    d = df["delta_norm"].to_numpy(float)
    low_nu = (ne < e_max) & (nr < r_max)
    specific = np.where(df["direction"].to_numpy() == "B", d >= hi, d <= lo) & low_nu & (df["role"].to_numpy() != ROLE_BASELINE)
    if drop:
        specific &= stable
    df["stable"] = stable
    df["specific"] = specific
    df.attrs.update({"thresholds": {"fine_tune_only": hi, "base_only": lo, "nu_eps_max": e_max, "nu_r_max": r_max,
                                    "nu_stable": [s_lo, s_hi], "drop_unstable": drop}})
    return df
