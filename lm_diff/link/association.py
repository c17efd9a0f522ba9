"""Link category-level latent shifts to benchmark score gaps (methods B7, B8).

Inputs are plain tables:

- ``doc_acts``: one row per (task, doc_id, latent, set) with ``act`` = max over the document's tokens of f_j. ``set`` is
  ``"S"`` (fine-tune-specific latents, activations from the crosscoder pair containing B) or ``"T"`` (comparison set,
  activations from the pair containing A). Missing rows mean zero activation.
- ``latent_categories``: rows (latent, set, category) of assigned latents (multi-label allowed; an ``assigned`` column,
  when present, filters rows).
- ``joined``: ``lm_diff.bench.join.join_runs`` output (the universe of scored documents and per-document scores).

Functions: ``category_activation``, ``exposure``, ``association``, ``sign_agreement``, ``causal_fraction`` and the
ablation hook ``ablate_latents_hook``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from lm_diff.config import StatsConfig
from lm_diff.errors import UserError
from lm_diff.models import decoder_layers
from lm_diff.stats import bh_qvalues, point_biserial

# ----------------------------------------------------------------------------------------------------------------------
# Exposure and association


def _latent_cats(latent_categories: pd.DataFrame) -> pd.DataFrame:
    lc = latent_categories.copy()
    if "assigned" in lc.columns:
        lc = lc[lc["assigned"].astype(bool)]
    if "set" not in lc.columns:
        lc["set"] = "S"
    missing = {"latent", "category"} - set(lc.columns)
    if missing:
        raise UserError(f"latent category table lacks column(s) {sorted(missing)}; expected latent, set, category")
    return lc[["latent", "set", "category"]].drop_duplicates()


def category_activation(doc_acts: pd.DataFrame, latent_categories: pd.DataFrame, docs: pd.DataFrame) -> pd.DataFrame:
    """Per document, category and set: a_c(doc) = Σ_{j∈set∩c} max-over-tokens f_j(doc).

    ``docs`` lists the scored documents (columns task, doc_id); documents without activation rows get 0. Returns a
    DataFrame with columns task, doc_id, set, category, activation (one row per document × (set, category) pair
    present in ``latent_categories``).
    """
    lc = _latent_cats(latent_categories)
    base = docs[["task", "doc_id"]].drop_duplicates()
    pairs = lc[["set", "category"]].drop_duplicates()
    grid = base.merge(pairs, how="cross")
    if doc_acts is None or doc_acts.empty or lc.empty:
        grid["activation"] = 0.0
        return grid
    da = doc_acts.copy()
    if "set" not in da.columns:
        da["set"] = "S"
    m = da.merge(lc, on=["latent", "set"], how="inner")
    summed = m.groupby(["task", "doc_id", "set", "category"], as_index=False)["act"].sum()
    out = grid.merge(summed, on=["task", "doc_id", "set", "category"], how="left")
    out["activation"] = out.pop("act").fillna(0.0).astype(float)
    return out


def _category_docs(category: str, joined: pd.DataFrame, task_categories: Mapping[str, str]) -> tuple[pd.Series, str]:
    """Mask of the category's scored documents (tasks mapped to it), or all documents when none is mapped."""
    tasks = [t for t, c in task_categories.items() if c == category]
    mask = joined.task.isin(tasks)
    if mask.any():
        return mask, "category_tasks"
    return pd.Series(True, index=joined.index), "all_tasks"


def exposure(
    doc_acts: pd.DataFrame,
    latent_categories: pd.DataFrame,
    joined: pd.DataFrame,
    task_categories: Optional[Mapping[str, str]] = None,
) -> pd.DataFrame:
    """Category exposure E_{c,t}: mean over documents of Σ_{j∈S∩c} max-over-tokens f_j (and likewise T on A).

    Returns rows (category, set, task, exposure, n_docs, scope): one per task, plus one with ``task = None`` over the
    category's scored documents (``scope = category_tasks``; ``all_tasks`` when no task is mapped to the category).
    """
    cats = dict(joined.attrs.get("task_categories") or {})
    cats.update(task_categories or {})
    ca = category_activation(doc_acts, latent_categories, joined)
    rows = []
    if ca.empty:
        return pd.DataFrame(columns=["category", "set", "task", "exposure", "n_docs", "scope"])
    for (s, c), g in ca.groupby(["set", "category"], sort=True):
        for t, gt in g.groupby("task", sort=True):
            rows.append({"category": c, "set": s, "task": t, "exposure": float(gt.activation.mean()), "n_docs": len(gt), "scope": "task"})
        mask, scope = _category_docs(c, joined, cats)
        keys = joined.loc[mask, ["task", "doc_id"]].drop_duplicates()
        sub = g.merge(keys, on=["task", "doc_id"])
        rows.append({"category": c, "set": s, "task": None, "exposure": float(sub.activation.mean()) if len(sub) else float("nan"),
                     "n_docs": len(sub), "scope": scope})
    return pd.DataFrame(rows)


def association(
    doc_acts: pd.DataFrame,
    latent_categories: pd.DataFrame,
    joined: pd.DataFrame,
    task_categories: Optional[Mapping[str, str]] = None,
    stats_cfg: Any = None,
) -> pd.DataFrame:
    """Per category: point-biserial correlation between the S∩c activation on an item and the flip indicator
    (B better than A on that item, e.g. B right and A wrong) over the category's scored documents, with a
    permutation p-value and BH q-values across categories.

    Returns rows (category, scope, n_docs, n_flips, r, p_value, q_value). r is NaN when the activation or the flip
    indicator is constant.
    """
    cfg = stats_cfg or StatsConfig()
    cats = dict(joined.attrs.get("task_categories") or {})
    cats.update(task_categories or {})
    ca = category_activation(doc_acts, latent_categories, joined)
    ca = ca[ca["set"] == "S"]
    j = joined[["task", "doc_id", "score_a", "score_b"]].copy()
    hib = joined.attrs.get("higher_is_better") or {}
    sign = j.task.map(lambda t: 1.0 if hib.get(t, True) else -1.0)
    j["flip"] = (((j.score_b - j.score_a) * sign) > 0).astype(float)
    rows = []
    for c, g in ca.groupby("category", sort=True):
        mask, scope = _category_docs(c, joined, cats)
        sub = j[mask.to_numpy()].merge(g[["task", "doc_id", "activation"]], on=["task", "doc_id"], how="left")
        x = sub.activation.fillna(0.0).to_numpy()
        y = sub.flip.to_numpy()
        r, p = point_biserial(x, y, n_perm=cfg.permutations, seed=cfg.seed) if len(sub) >= 3 else (float("nan"), float("nan"))
        rows.append({"category": c, "scope": scope, "n_docs": int(len(sub)), "n_flips": int(y.sum()), "r": r, "p_value": p})
    out = pd.DataFrame(rows, columns=["category", "scope", "n_docs", "n_flips", "r", "p_value"])
    if len(out):
        p = out.p_value.to_numpy(dtype=float)
        q = np.full_like(p, np.nan)
        ok = ~np.isnan(p)
        if ok.any():
            q[ok] = bh_qvalues(p[ok])
        out["q_value"] = q
    else:
        out["q_value"] = []
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Sign agreement


def _finite(x: Any) -> bool:
    try:
        return x is not None and np.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def shift_significant(latent_shift: Mapping[str, Any], alpha: float = 0.05) -> Optional[bool]:
    """Whether a category's latent shift is significant: q_value < alpha when known, else the CI of the share ratio
    (R − 1 scale) excludes 0. None when unknown; False when marked insufficient."""
    if not latent_shift:
        return None
    if latent_shift.get("insufficient"):
        return False
    q = latent_shift.get("q_value")
    if _finite(q):
        return float(q) < alpha
    lo, hi = latent_shift.get("ci_low"), latent_shift.get("ci_high")
    if _finite(lo) or _finite(hi):
        return (_finite(lo) and float(lo) > 0) or (_finite(hi) and float(hi) < 0)
    return None


def gap_significant(score_gap: Mapping[str, Any]) -> Optional[bool]:
    """Whether a score gap's CI excludes 0 (None when unknown)."""
    if not score_gap:
        return None
    lo, hi = score_gap.get("ci_low"), score_gap.get("ci_high")
    if not (_finite(lo) and _finite(hi)):
        return None
    return float(lo) > 0 or float(hi) < 0


def sign_agreement(latent_shift: Optional[Mapping[str, Any]], score_gap: Optional[Mapping[str, Any]], alpha: float = 0.05) -> Optional[bool]:
    """True when sign(share-ratio shift) == sign(Δscore), False when they differ, None when either is not significant
    (or unknown). ``latent_shift``: {share_ratio (R − 1), ci_low, ci_high, q_value, insufficient}; ``score_gap``:
    {delta, ci_low, ci_high}."""
    if not latent_shift or not score_gap:
        return None
    if not shift_significant(latent_shift, alpha) or not gap_significant(score_gap):
        return None
    sr, d = latent_shift.get("share_ratio"), score_gap.get("delta")
    if sr is None or d is None:
        return None
    sr, d = float(sr), float(d)
    if np.isnan(sr) or np.isnan(d) or sr == 0 or d == 0:
        return None
    return bool(np.sign(sr) == np.sign(d))


# ----------------------------------------------------------------------------------------------------------------------
# Causal check


def causal_fraction(
    score_A: float | Sequence[float],
    score_B: float | Sequence[float],
    score_patched: float | Sequence[float],
    score_random: Optional[float | Sequence[float]] = None,
    *,
    mode: str = "patch_a",
    n_boot: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Fraction of the score gap explained by a category's latents, against a matched random-latent control.

    ``mode="patch_a"`` (the formula of methods B8): the intervention patches B's latents into A, and
    fraction = (patched − A) / (B − A). ``mode="ablate_b"``: the intervention ablates the latents in B, and
    fraction = (B − patched) / (B − A), so that 1 again means "the whole gap" in both modes. ``score_random`` is the
    same intervention on random latents of the same count and frequency bin; ``excess = fraction − random_fraction``.

    Scores may be scalars or per-document arrays (paired, same documents); with arrays and ``n_boot > 0`` a paired
    bootstrap percentile CI of ``fraction`` is added. ``fraction`` is None when the gap is 0.
    """
    if mode not in ("patch_a", "ablate_b"):
        raise ValueError(f"mode must be 'patch_a' or 'ablate_b', got {mode!r}")

    def frac(a, b, p):
        gap = b - a
        if gap == 0 or not np.isfinite(gap):
            return None
        return float((p - a) / gap) if mode == "patch_a" else float((b - p) / gap)

    arrs = [np.atleast_1d(np.asarray(x, dtype=float)) for x in (score_A, score_B, score_patched)]
    a, b, p = (float(x.mean()) for x in arrs)
    out: dict[str, Any] = {"mode": mode, "score_A": a, "score_B": b, "score_patched": p, "gap": b - a, "fraction": frac(a, b, p)}
    if score_random is not None:
        rnd = np.atleast_1d(np.asarray(score_random, dtype=float))
        out["score_random"] = float(rnd.mean())
        out["random_fraction"] = frac(a, b, float(rnd.mean()))
        out["excess"] = None if out["fraction"] is None or out["random_fraction"] is None else out["fraction"] - out["random_fraction"]
    else:
        out["score_random"] = out["random_fraction"] = out["excess"] = None
    n = arrs[0].size
    if n_boot and n > 1 and all(x.size == n for x in arrs):
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(n_boot, n))
        fa, fb, fp = (x[idx].mean(axis=1) for x in arrs)
        gap = fb - fa
        with np.errstate(divide="ignore", invalid="ignore"):
            f = (fp - fa) / gap if mode == "patch_a" else (fb - fp) / gap
        f = f[np.isfinite(f)]
        if f.size:
            lo, hi = np.quantile(f, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])
            out["ci_low"], out["ci_high"] = float(lo), float(hi)
    out["n_docs"] = int(n) if n > 1 else None
    return out


def causal_table(causal: Optional[Mapping[str, Any]]) -> dict[str, dict]:
    """{category: causal dict} from a ``causal.json`` mapping: entries with scores (score_A, score_B, score_patched,
    score_random, mode) go through ``causal_fraction``; entries that already hold ``fraction`` pass through."""
    out: dict[str, dict] = {}
    for cat, v in (causal or {}).items():
        if not isinstance(v, Mapping):
            continue
        if "fraction" in v:
            out[str(cat)] = dict(v)
        elif all(k in v for k in ("score_A", "score_B", "score_patched")):
            extra = {k: v[k] for k in v if k not in ("score_A", "score_B", "score_patched", "score_random", "mode")}
            res = causal_fraction(v["score_A"], v["score_B"], v["score_patched"], v.get("score_random"), mode=v.get("mode", "patch_a"))
            out[str(cat)] = {**extra, **{k: x for k, x in res.items() if x is not None or k not in extra}}
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Ablation hook


def _input_ids(args: tuple, kwargs: dict):
    if "input_ids" in kwargs and kwargs["input_ids"] is not None:
        return kwargs["input_ids"]
    return args[0] if args else None


@contextlib.contextmanager
def ablate_latents_hook(
    cc,
    latents: Iterable[int],
    model_index: int,
    layer: int,
    *,
    model,
    partner_models: Optional[Mapping[int, Any]] = None,
) -> Iterator[dict]:
    """Within the context, forwards of ``model`` have Σ_{j∈latents} f_j d_j^m subtracted from the output of decoder
    layer ``layer`` (m = ``model_index``; the residual stream after the layer, as captured).

    The crosscoder encodes all its models' activations jointly. ``partner_models`` maps the other model indices to
    their models: on each forward of ``model``, each partner is run on the same ``input_ids`` (and attention mask) to
    get its layer activation. Without partners, the other slots are filled with ``model``'s own activation (an
    approximation; recorded as ``approximate=True`` in the yielded info dict). ``cc.encode`` takes raw activations (it
    normalises them itself); the subtracted term is mapped back to raw space with ``cc.denormalise`` (affine-safe:
    denormalise(Z + C) − denormalise(Z); identity when the normalisation is folded). Works whether the layer returns a tensor (transformers 5) or a tuple.

    Yields a dict updated on every forward: ``calls``, ``mean_removed_norm`` (mean L2 norm of the subtracted vector
    per token), ``approximate``.
    """
    import torch  # noqa: PLC0415 - torch only for the ablation hook; exposure and association stay light

    lat = torch.as_tensor(sorted({int(j) for j in latents}), dtype=torch.long)
    layers = decoder_layers(model)
    partners = dict(partner_models or {})
    n_models = int(getattr(cc, "n_models", None) or cc.W_dec_LMD.shape[1])
    info: dict[str, Any] = {"calls": 0, "mean_removed_norm": 0.0, "approximate": len(partners) < n_models - 1}
    state: dict[str, Any] = {}
    handles = []

    def _partner_acts(pm, input_ids, attn) -> "torch.Tensor":
        captured = {}

        def grab(_m, _a, out):
            captured["h"] = out[0] if isinstance(out, tuple) else out

        h = decoder_layers(pm)[layer].register_forward_hook(grab)
        try:
            with torch.no_grad():
                kw = {"attention_mask": attn} if attn is not None else {}
                pm(input_ids=input_ids, **kw)
        finally:
            h.remove()
        return captured["h"]

    def pre_hook(_mod, args, kwargs):
        state.clear()
        ids = _input_ids(args, kwargs)
        if ids is not None and partners:
            attn = kwargs.get("attention_mask")
            state["partners"] = {i: _partner_acts(pm, ids, attn) for i, pm in partners.items()}
        return None

    def layer_hook(_mod, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        shape = hidden.shape
        x = hidden.reshape(-1, shape[-1])
        slots = []
        for m in range(n_models):
            if m == model_index:
                slots.append(x)
            elif m in state.get("partners", {}):
                slots.append(state["partners"][m].reshape(-1, shape[-1]).to(x.dtype))
            else:
                slots.append(x)
        acts = torch.stack(slots, dim=1).float()  # B M D
        with torch.no_grad():
            f = cc.encode(acts)  # B L; encode() normalises raw activations itself
            f_sel = f[:, lat]
            W = cc.W_dec_LMD[lat]  # l M D
            contrib = torch.einsum("bl,lmd->bmd", f_sel, W.to(f_sel.dtype))
            if hasattr(cc, "denormalise"):
                zeros = torch.zeros_like(contrib)
                contrib = cc.denormalise(zeros + contrib) - cc.denormalise(zeros)
            remove = contrib[:, model_index, :].to(hidden.dtype).reshape(shape)
        info["calls"] += 1
        info["mean_removed_norm"] = float(remove.reshape(-1, shape[-1]).norm(dim=-1).mean())
        new = hidden - remove
        if isinstance(output, tuple):
            return (new,) + tuple(output[1:])
        return new

    try:
        if partners:
            handles.append(model.register_forward_pre_hook(pre_hook, with_kwargs=True))
        handles.append(layers[layer].register_forward_hook(layer_hook))
        yield info
    finally:
        for h in handles:
            h.remove()
