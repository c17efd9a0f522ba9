"""Activating examples per selected latent (docs/method.md#activating-examples), Delphi-compatible.

Two streamed passes over the store:

1. For the selected latents only: the top activating tokens (with 3× head-room, then at most one per window per
   document), a uniform reservoir sample of activating tokens (for the quantile samples) and a reservoir of
   non-activating tokens (for random non-activating windows).
   Non-activating windows are centred on a token where the latent is silent; windows silent throughout are
   preferred (a dense latent may fire elsewhere in every window).
2. Fill each chosen window (``window`` tokens of the same document around the token, 3/4 before it) with token ids
   and the latent's activation on every token.

Output (also the input format of ``lm_diff.categorize.annotate.annotate_latents``)::

    examples[latent] = {"latent": j, "layer": ..., "max_act": float, "n_active": int, "n_tokens": int,
                        "act_hist": {"edges": [...], "counts": [...]},   # nonzero activations, sampled
                        "activating": [ {kind: "top"|"quantile", quantile, doc_id, position, token_ids, tokens,
                                         text, acts, max_act}, ... ]   # sorted by max_act, descending
                        "non_activating": [ {kind: "random", ...same fields...}, ... ]}

Token strings are ``tokenizer.decode([id])`` per token (their concatenation is ``text``); without a tokenizer they
are the ids as strings. :func:`export_delphi_jsonl` writes one JSON line per latent (atomic write).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from lm_diff.diff.table import encode_batch, iter_store, progress_bar, store_tokens
from lm_diff.io import atomic_path

_POS_BITS = 24
_POS_MASK = (1 << _POS_BITS) - 1

__all__ = ["collect_examples", "export_delphi_jsonl", "load_examples_jsonl"]


def _keys(meta: dict, n: int) -> np.ndarray:
    doc = np.asarray(meta["doc_id"]).astype(np.int64).reshape(n)
    pos = np.asarray(meta["position"]).astype(np.int64).reshape(n)
    return (doc << _POS_BITS) | pos


def _reservoir_update(pri: torch.Tensor, key: torch.Tensor, val: torch.Tensor, new_pri: torch.Tensor, new_key: torch.Tensor, new_val: torch.Tensor):
    """Keep the entries with the smallest priority per row (priority inf = empty)."""
    P = torch.cat([pri, new_pri], 1)
    K = torch.cat([key, new_key], 1)
    V = torch.cat([val, new_val], 1)
    size = pri.shape[1]
    order = torch.topk(P, size, dim=1, largest=False).indices
    return P.gather(1, order), K.gather(1, order), V.gather(1, order)


def collect_examples(
    cc: Any,
    store: Any,
    layer: Any,
    models: Sequence[int],
    latents: Sequence[int],
    tokenizer: Any = None,
    cfg: Any = None,
    *,
    n_top: Optional[int] = None,
    n_quantiles: Optional[int] = None,
    per_quantile: int = 5,
    n_random: Optional[int] = None,
    window: Optional[int] = None,
    split: str = "all",
    max_tokens: Optional[int] = None,
    reservoir: int = 2000,
    seed: int = 0,
    progress: bool = False,
    hist_bins: int = 20,
) -> dict[int, dict[str, Any]]:
    """Top-n max-activating windows, ``per_quantile`` windows from each of ``n_quantiles`` activation quantiles, and
    ``n_random`` random non-activating windows per latent (defaults from ``DiffConfig``: top_examples, quantiles,
    random_examples, window). The store must yield ``doc_id``, ``position`` and ``token_id`` metadata. ``act_hist``
    is a ``hist_bins``-bin histogram of the latent's nonzero activations (from the uniform reservoir of activating
    tokens, so its counts are a sample of at most ``reservoir``; ``n_active`` is the exact count)."""
    n_top = int(n_top if n_top is not None else getattr(cfg, "top_examples", 100))
    n_q = int(n_quantiles if n_quantiles is not None else getattr(cfg, "quantiles", 10))
    n_rand = int(n_random if n_random is not None else getattr(cfg, "random_examples", 50))
    window = int(window if window is not None else getattr(cfg, "window", 32))
    batch_size = int(getattr(cfg, "stream_batch_size", 4096))
    lat = torch.as_tensor(np.asarray(latents, dtype=np.int64))
    K = len(lat)
    if K == 0:
        return {}
    g = torch.Generator().manual_seed(seed)
    inf = float("inf")
    top_n = max(3 * n_top, 1)
    top_v = torch.full((K, top_n), -inf)
    top_k = torch.full((K, top_n), -1, dtype=torch.long)
    R = max(reservoir, 1)
    q_p, q_k, q_v = torch.full((K, R), inf), torch.full((K, R), -1, dtype=torch.long), torch.zeros(K, R)
    Rn = max(2 * n_rand, 1)
    z_p, z_k, z_v = torch.full((K, Rn), inf), torch.full((K, Rn), -1, dtype=torch.long), torch.zeros(K, Rn)
    n_active = torch.zeros(K, dtype=torch.long)
    max_act = torch.zeros(K)
    n_tokens = 0
    total = max_tokens or store_tokens(store, split)

    # Pass 1: choose tokens.
    with progress_bar(progress, f"examples: scan ({K} latents)", total) as advance:
        for acts, meta in iter_store(store, layer, models, batch_size, split=split, max_tokens=max_tokens):
            B = acts.shape[0]
            keys = torch.as_tensor(_keys(meta, B))
            _, f = encode_batch(cc, acts)   # on the crosscoder's device; the K selected columns come back
            fK = f[:, lat.to(f.device)].float().T.contiguous().cpu()  # [K, B]
            n_tokens += B
            on = fK > 0
            n_active += on.sum(1)
            max_act = torch.maximum(max_act, fK.max(1).values)
            kb = keys.expand(K, B)
            V = torch.cat([top_v, torch.where(on, fK, torch.full_like(fK, -inf))], 1)
            Kk = torch.cat([top_k, kb], 1)
            o = torch.topk(V, top_n, dim=1).indices
            top_v, top_k = V.gather(1, o), Kk.gather(1, o)
            u = torch.rand(K, B, generator=g)
            q_p, q_k, q_v = _reservoir_update(q_p, q_k, q_v, torch.where(on, u, torch.full_like(u, inf)), kb, fK)
            u = torch.rand(K, B, generator=g)
            z_p, z_k, z_v = _reservoir_update(z_p, z_k, z_v, torch.where(~on, u, torch.full_like(u, inf)), kb, fK)
            advance(B)

    # Choose examples per latent: (latent row, key, kind, quantile).
    rng = np.random.default_rng(seed)
    chosen: list[tuple[int, int, str, Optional[int]]] = []
    left = window * 3 // 4
    hists: list[dict[str, list]] = []
    for r in range(K):
        kept: list[int] = []
        for v, key in zip(top_v[r].tolist(), top_k[r].tolist()):
            if v == -inf or len(kept) >= n_top:
                break
            doc, pos = key >> _POS_BITS, key & _POS_MASK
            if any((k >> _POS_BITS) == doc and abs((k & _POS_MASK) - pos) < window for k in kept):
                continue
            kept.append(key)
        chosen += [(r, k, "top", None) for k in kept]
        ok = torch.isfinite(q_p[r])
        vals, ks = q_v[r][ok].numpy(), q_k[r][ok].numpy()
        counts, edges = np.histogram(vals, bins=hist_bins, range=(0.0, float(vals.max()) if len(vals) else 1.0))
        hists.append({"edges": [round(float(x), 4) for x in edges], "counts": counts.tolist()})
        if len(vals) and n_q > 0:
            edges = np.quantile(vals, np.linspace(0, 1, n_q + 1))
            bins = np.clip(np.searchsorted(edges, vals, side="right") - 1, 0, n_q - 1)
            for qi in range(n_q):
                members = np.flatnonzero(bins == qi)
                take = rng.choice(members, size=min(per_quantile, len(members)), replace=False) if len(members) else []
                chosen += [(r, int(ks[i]), "quantile", qi + 1) for i in take]
        ok = torch.isfinite(z_p[r])
        chosen += [(r, int(k), "random", None) for k in z_k[r][ok].tolist()]

    # Pass 2: fill windows. Pair = (example, offset) with the key of the token it needs.
    offsets = np.arange(window) - left + 1
    ex_keys = np.array([c[1] for c in chosen], dtype=np.int64)
    ex_rows = np.array([c[0] for c in chosen], dtype=np.int64)
    pos0 = ex_keys & _POS_MASK
    pair_pos = pos0[:, None] + offsets[None, :]
    valid = pair_pos >= 0
    pair_key = ((ex_keys >> _POS_BITS)[:, None] << _POS_BITS) | np.where(valid, pair_pos, 0)
    pair_key = np.where(valid, pair_key, -1).ravel()
    pair_row = np.repeat(ex_rows, window)
    order = np.argsort(pair_key, kind="stable")
    sk = pair_key[order]
    pair_act = np.full(pair_key.shape, np.nan, dtype=np.float32)
    pair_tok = np.full(pair_key.shape, -1, dtype=np.int64)
    if len(chosen):
        with progress_bar(progress, "examples: windows", total) as advance:
            for acts, meta in iter_store(store, layer, models, batch_size, split=split, max_tokens=max_tokens):
                B = acts.shape[0]
                keys = _keys(meta, B)
                lo = np.searchsorted(sk, keys, "left")
                hi = np.searchsorted(sk, keys, "right")
                cnt = hi - lo
                hit = np.flatnonzero(cnt)
                if len(hit):
                    _, f = encode_batch(cc, acts[torch.as_tensor(hit)])
                    fK = f[:, lat.to(f.device)].float().cpu().numpy()  # [H, K]
                    reps = cnt[hit]
                    b_local = np.repeat(np.arange(len(hit)), reps)
                    starts = np.repeat(lo[hit], reps)
                    within = np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps)
                    pidx = order[starts + within]
                    pair_act[pidx] = fK[b_local, pair_row[pidx]]
                    tok = np.asarray(meta["token_id"]).astype(np.int64).reshape(B)
                    pair_tok[pidx] = tok[hit][b_local]
                advance(B)
    pair_act = pair_act.reshape(len(chosen), window)
    pair_tok = pair_tok.reshape(len(chosen), window)

    def decode(ids: list[int]) -> list[str]:
        if tokenizer is None:
            return [str(i) for i in ids]
        return [tokenizer.decode([i]) for i in ids]

    out: dict[int, dict[str, Any]] = {}
    for r, j in enumerate(lat.tolist()):
        out[j] = {
            "latent": j,
            "layer": str(layer),
            "max_act": float(max_act[r]),
            "n_active": int(n_active[r]),
            "n_tokens": int(n_tokens),
            "act_hist": hists[r],
            "activating": [],
            "non_activating": [],
        }
    for e, (r, key, kind, q) in enumerate(chosen):
        have = pair_tok[e] >= 0
        ids = pair_tok[e][have].tolist()
        a = np.nan_to_num(pair_act[e][have]).astype(float).tolist()
        toks = decode(ids)
        ex = {
            "kind": kind,
            "quantile": q,
            "doc_id": int(key >> _POS_BITS),
            "position": int(key & _POS_MASK),
            "token_ids": ids,
            "tokens": toks,
            "text": "".join(toks),
            "acts": a,
            "max_act": max(a, default=0.0),
        }
        rec = out[int(lat[r])]
        if kind == "random":
            rec["non_activating"].append(ex)
        else:
            rec["activating"].append(ex)
    for rec in out.values():
        rec["activating"].sort(key=lambda x: -x["max_act"])
        # Windows where the latent is silent throughout come first; dense latents may only have windows whose
        # centre token is silent.
        rec["non_activating"] = sorted(rec["non_activating"], key=lambda x: x["max_act"] > 0)[:n_rand]
    return out


def export_delphi_jsonl(examples: dict[int, dict[str, Any]], path: str | Path, module_name: Optional[str] = None) -> Path:
    """Write one JSON object per latent (``latent``, ``module_name``, ``activating``, ``non_activating`` … as in
    :func:`collect_examples`; Delphi's ``ActivatingExample`` fields ``tokens``/``str_tokens``/``activations``/
    ``quantile`` are added as aliases) atomically."""
    with atomic_path(path, suffix=".jsonl") as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for j in sorted(examples):
            rec = dict(examples[j])
            rec["module_name"] = module_name or f"layer_{rec.get('layer', '')}"
            for group in ("activating", "non_activating"):
                rec[group] = [
                    {**ex, "str_tokens": ex["tokens"], "activations": ex["acts"]} for ex in rec.get(group, [])
                ]
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return Path(path)


def load_examples_jsonl(path: str | Path) -> dict[int, dict[str, Any]]:
    """Read :func:`export_delphi_jsonl` output back into ``{latent: record}``."""
    out = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rec = json.loads(line)
                out[int(rec["latent"])] = rec
    return out
