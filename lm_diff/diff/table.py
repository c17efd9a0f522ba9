"""Per-latent table (docs/method.md#latent-table): decoder-norm statistics, tags and streamed activation statistics, one row per latent.

**Δnorm orientation.** Every ``delta_norm`` in lm_diff is in the *paper* orientation (Minder et al. §3.3; docs/method.md#delta-norm):

    Δ_j = ½ ((‖d_j^B‖ − ‖d_j^A‖) / max(‖d_j^A‖, ‖d_j^B‖) + 1),   1 = fine-tune (B) only, 0 = base (A) only.

The crosscoder_learning / diffing-toolkit code column ``dec_norm_diff`` is ((‖d^A‖ − ‖d^B‖)/max + 1)/2 = **1 − Δ**
(there "ft_only" means ``dec_norm_diff < 0.1``). The table also carries ``dec_norm_diff_code = 1 − Δ`` so tables can
be compared with that code; convert with :func:`delta_from_code` / :func:`delta_to_code`, never by hand.

Index convention: model index 0 of ``models`` is A, index 1 is B (``models=(0, 0)`` = identity control).

Activations: the store yields raw activations; :func:`encode_batch` / :func:`decode_batch` (the one place that does
this) map them into the crosscoder's working (normalised) space, where decoder norms, Δ and Latent Scaling live.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from lm_diff.diff import device as xdev
from lm_diff.diff.stream import (
    _meta_tensor,
    decode_batch,
    doc_categories,
    encode_batch,
    iter_store,
    progress_bar,
    source_info,
    store_tokens,
)
from lm_diff.io import atomic_path

TAG_A_ONLY = "A-only"
TAG_B_ONLY = "B-only"
TAG_SHARED = "shared"
TAG_OTHER = "other"
TAGS = (TAG_A_ONLY, TAG_B_ONLY, TAG_SHARED, TAG_OTHER)

__all__ = [
    "TAGS",
    "TAG_A_ONLY",
    "TAG_B_ONLY",
    "TAG_SHARED",
    "TAG_OTHER",
    "delta_norm",
    "delta_from_code",
    "delta_to_code",
    "tag_latents",
    "decoder_stats",
    "encode_batch",
    "decode_batch",
    "iter_store",
    "source_info",
    "doc_categories",
    "latent_table",
    "save_table",
    "progress_bar",
]


# ----------------------------------------------------------------------------------------------------------------------
# Decoder-norm statistics


def delta_norm(norm_A: Any, norm_B: Any) -> np.ndarray:
    """Δnorm in the paper orientation (1 = B only, 0 = A only); 0.5 when both norms are 0."""
    a = np.asarray(norm_A, dtype=np.float64)
    b = np.asarray(norm_B, dtype=np.float64)
    m = np.maximum(a, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = 0.5 * ((b - a) / np.where(m > 0, m, 1.0) + 1.0)
    return np.where(m > 0, d, 0.5)


def delta_from_code(dec_norm_diff: Any) -> np.ndarray:
    """Convert the crosscoder_learning code column ``dec_norm_diff`` (0 = fine-tune only) to paper Δ (1 = fine-tune only)."""
    return 1.0 - np.asarray(dec_norm_diff, dtype=np.float64)


def delta_to_code(delta: Any) -> np.ndarray:
    """Convert paper Δ to the code column ``dec_norm_diff`` (= 1 − Δ)."""
    return 1.0 - np.asarray(delta, dtype=np.float64)


def tag_latents(delta: Any, cfg: Any = None) -> np.ndarray:
    """Tag per latent: ``B-only`` (Δ ≥ fine_tune_only), ``A-only`` (Δ ≤ base_only), ``shared`` (Δ in shared_band),
    else ``other``. Thresholds from ``DiffConfig`` (defaults 0.9 / 0.1 / [0.4, 0.6])."""
    hi = getattr(cfg, "fine_tune_only", 0.9)
    lo = getattr(cfg, "base_only", 0.1)
    band = getattr(cfg, "shared_band", [0.4, 0.6])
    d = np.asarray(delta, dtype=np.float64)
    tags = np.full(d.shape, TAG_OTHER, dtype=object)
    tags[(d >= band[0]) & (d <= band[1])] = TAG_SHARED
    tags[d >= hi] = TAG_B_ONLY
    tags[d <= lo] = TAG_A_ONLY
    return tags


def _t(x: Any) -> torch.Tensor:
    return x.detach().to("cpu", torch.float64) if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x), dtype=torch.float64)


def _decoder_LMD(cc: Any) -> torch.Tensor:
    """The decoder [L, M, D] of a crosscoder in its normalised space (``code_scale_M`` applied when the
    normalisation was folded into the weights), or a raw tensor/array given directly."""
    if isinstance(cc, (torch.Tensor, np.ndarray)):
        return _t(cc)
    W = _t(cc.W_dec_LMD)
    scale = getattr(cc, "code_scale_M", None)
    if scale is not None:
        W = W * _t(scale)[None, :, None]
    return W


def _encoder_MDL(cc: Any) -> Optional[torch.Tensor]:
    w = getattr(cc, "W_enc_MDL", None)
    return None if w is None else _t(w)


def decoder_stats(cc: Any, cfg: Any = None) -> pd.DataFrame:
    """Weights-only columns of the per-latent table: norms, Δ (paper), ``dec_norm_diff_code`` (= 1 − Δ), r, cos,
    encoder norms and their Δ-style difference, tag. ``cc`` may also be a decoder tensor [L, M, D]; crosscoder
    position 0 is A and 1 is B (a one-model decoder is compared with itself)."""
    W = _decoder_LMD(cc)
    ia, ib = (0, 1) if W.shape[1] >= 2 else (0, 0)
    dA, dB = W[:, ia], W[:, ib]
    nA, nB = dA.norm(dim=-1).numpy(), dB.norm(dim=-1).numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(nA + nB > 0, nB / (nA + nB), 0.5)
        cos = (dA * dB).sum(-1).numpy() / (nA * nB)
    delta = delta_norm(nA, nB)
    df = pd.DataFrame(
        {
            "latent": np.arange(W.shape[0], dtype=np.int64),
            "norm_A": nA,
            "norm_B": nB,
            "delta_norm": delta,
            "dec_norm_diff_code": delta_to_code(delta),
            "r": r,
            "cos": np.where(np.isfinite(cos), cos, np.nan),
        }
    )
    E = None if isinstance(cc, (torch.Tensor, np.ndarray)) else _encoder_MDL(cc)
    if E is not None:
        eA, eB = E[ia].norm(dim=0).numpy(), E[ib].norm(dim=0).numpy()
        df["enc_norm_A"] = eA
        df["enc_norm_B"] = eB
        df["enc_delta"] = delta_norm(eA, eB)
    df["tag"] = tag_latents(delta, cfg)
    return df


# ----------------------------------------------------------------------------------------------------------------------
# The table


def latent_table(
    cc: Any,
    store: Any,
    layer: Any,
    models: Sequence[int] = (0, 1),
    cfg: Any = None,
    *,
    split: str = "all",
    max_tokens: Optional[int] = None,
    out: Optional[str | Path] = None,
    progress: bool = False,
) -> pd.DataFrame:
    """One row per latent (docs/method.md#latent-table), streamed over the store in one pass.

    Columns: ``latent, norm_A, norm_B, delta_norm`` (paper: 1 = B only), ``dec_norm_diff_code`` (= 1 − Δ, the
    crosscoder_learning column), ``r`` = ‖d^B‖/(‖d^A‖+‖d^B‖), ``cos`` (d^A, d^B), ``enc_norm_A, enc_norm_B, enc_delta``
    (Δ-style encoder-norm difference, when the crosscoder exposes ``W_enc_MDL``), ``freq`` (fraction of tokens on which
    the latent fires), ``mean_act`` (E_x f_j over all tokens, the activation-mass weight), ``mean_act_active`` (mean
    over firing tokens), ``max_act``, per source ``freq[label]``, ``mean[label]``, ``max[label]`` for each corpus
    label and ``freq[cat:C]``, ``mean[cat:C]``, ``max[cat:C]`` for each benchmark category, ``template_frac``
    (share of the latent's firings on chat-template tokens), ``template_mass`` (share of its activation mass on
    them), ``dead`` (never fired on the streamed tokens), ``tag`` ∈ {A-only, B-only, shared, other}.

    Per-source columns use the per-token ``source_id`` (``store.sources``); per-category columns use the category of
    each document in ``store.docs()`` (benchmark prompts). ``cfg`` is a ``DiffConfig`` (thresholds,
    ``stream_batch_size``); ``max_tokens`` caps the pass; with ``out`` the
    table is written there as parquet atomically. ``df.attrs`` records n_tokens, layer and models.
    """
    df = decoder_stats(cc, cfg)
    L = len(df)
    labels, _ = source_info(store)
    S = len(labels)
    doc_keys, doc_codes, cats = doc_categories(store)
    C = len(cats)
    sdev = xdev.stats_device(xdev.crosscoder_device(cc))   # the stage runs where the crosscoder is
    c_cnt = torch.zeros(C, L, dtype=torch.float64, device=sdev)
    c_sum = torch.zeros(C, L, dtype=torch.float64, device=sdev)
    c_max = torch.zeros(C, L, dtype=torch.float64, device=sdev)
    c_tok = torch.zeros(C, dtype=torch.float64, device=sdev)
    batch_size = int(getattr(cfg, "stream_batch_size", 4096))
    cnt = torch.zeros(L, dtype=torch.float64, device=sdev)
    tot = torch.zeros(L, dtype=torch.float64, device=sdev)
    mx = torch.zeros(L, dtype=torch.float64, device=sdev)
    tcnt = torch.zeros(L, dtype=torch.float64, device=sdev)
    tsum = torch.zeros(L, dtype=torch.float64, device=sdev)
    s_cnt = torch.zeros(S, L, dtype=torch.float64, device=sdev)
    s_sum = torch.zeros(S, L, dtype=torch.float64, device=sdev)
    s_max = torch.zeros(S, L, dtype=torch.float64, device=sdev)
    s_tok = torch.zeros(S, dtype=torch.float64, device=sdev)
    n_tokens = 0
    has_template = False
    total = max_tokens or store_tokens(store, split)
    with progress_bar(progress, f"latent table (layer {layer})", total) as advance:
        for acts, meta in iter_store(store, layer, models, batch_size, split=split, max_tokens=max_tokens):
            _, f = encode_batch(cc, acts)
            f = f.to(sdev).double()
            B = f.shape[0]
            on = (f > 0).double()
            n_tokens += B
            cnt += on.sum(0)
            tot += f.sum(0)
            mx = torch.maximum(mx, f.max(0).values)
            tmpl = _meta_tensor(meta, "template", B, torch.bool, sdev)
            if tmpl is not None:
                has_template = True
                tw = tmpl.double()
                tcnt += tw @ on
                tsum += tw @ f
            src = _meta_tensor(meta, "source_id", B, device=sdev)
            if src is not None and S:
                s_cnt.index_add_(0, src, on)
                s_sum.index_add_(0, src, f)
                s_tok.index_add_(0, src, torch.ones(B, dtype=torch.float64, device=sdev))
                s_max.scatter_reduce_(0, src[:, None].expand(-1, L), f, reduce="amax")
            doc = _meta_tensor(meta, "doc_id", B)
            if doc is not None and C:
                pos = np.searchsorted(doc_keys, doc.numpy())
                pos = np.clip(pos, 0, len(doc_keys) - 1)
                code = np.where(doc_keys[pos] == doc.numpy(), doc_codes[pos], -1)
                hit_np = np.flatnonzero(code >= 0)
                if len(hit_np):
                    hit = torch.as_tensor(hit_np, device=sdev)
                    cid = torch.as_tensor(code[hit_np], device=sdev)
                    c_cnt.index_add_(0, cid, on[hit])
                    c_sum.index_add_(0, cid, f[hit])
                    c_tok.index_add_(0, cid, torch.ones(len(hit_np), dtype=torch.float64, device=sdev))
                    c_max.scatter_reduce_(0, cid[:, None].expand(-1, L), f[hit], reduce="amax")
            advance(B)
    cnt, tot, mx, tcnt, tsum = (t.cpu() for t in (cnt, tot, mx, tcnt, tsum))
    s_cnt, s_sum, s_max, s_tok = (t.cpu() for t in (s_cnt, s_sum, s_max, s_tok))
    c_cnt, c_sum, c_max, c_tok = (t.cpu() for t in (c_cnt, c_sum, c_max, c_tok))
    n = max(n_tokens, 1)
    cols: dict[str, Any] = {
        "freq": (cnt / n).numpy(),
        "mean_act": (tot / n).numpy(),
        "mean_act_active": torch.where(cnt > 0, tot / cnt.clamp(min=1), torch.zeros_like(tot)).numpy(),
        "max_act": mx.numpy(),
    }

    def per_group(name: str, c: torch.Tensor, s: torch.Tensor, m: torch.Tensor, ntok: torch.Tensor) -> None:
        d = ntok.clamp(min=1)
        cols[f"freq[{name}]"] = (c / d).numpy()
        cols[f"mean[{name}]"] = (s / d).numpy()
        cols[f"max[{name}]"] = m.numpy()

    for i, label in enumerate(labels):
        per_group(label, s_cnt[i], s_sum[i], s_max[i], s_tok[i])
    for i, cat in enumerate(cats):
        per_group(f"cat:{cat}", c_cnt[i], c_sum[i], c_max[i], c_tok[i])
    if has_template:
        cols["template_frac"] = torch.where(cnt > 0, tcnt / cnt.clamp(min=1), torch.full_like(cnt, float("nan"))).numpy()
        cols["template_mass"] = torch.where(tot > 0, tsum / tot.clamp(min=1e-30), torch.full_like(tot, float("nan"))).numpy()
    cols["dead"] = (cnt == 0).numpy()
    tag = df.pop("tag")
    df = pd.concat([df, pd.DataFrame(cols)], axis=1)
    df["tag"] = tag.astype(str)
    df.attrs.update({"n_tokens": int(n_tokens), "layer": str(layer), "models": list(models), "sources": labels})
    if out is not None:
        save_table(df, out)
    return df


def save_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a DataFrame as parquet atomically (``attrs`` are kept by pandas' pyarrow writer)."""
    with atomic_path(path, suffix=".parquet") as tmp:
        df.to_parquet(tmp, index=False)
    return Path(path)
