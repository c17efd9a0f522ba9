"""Crosscoder quality metrics (docs/method.md#quality-gates), per model on held-out tokens.

Forms used (all in raw activation space, after de-normalising the reconstruction):

- ``fvu`` = Σ_x ‖x − x̂‖² / Σ_x ‖x − x̄‖² and ``ev`` = 1 − fvu (docs/method.md#quality-gates; x̄ = mean over the evaluated tokens).
- ``ev_centred`` = 1 − Σ_d Var(x − x̂)_d / Σ_d Var(x)_d (SAELens / dictionary_learning form; ignores a constant bias
  in the residual). Both are reported; the quality gate uses ``ev``.
- ``l0`` = mean number of active latents per token (latents are shared, so it is one number for all models).
- ``dead_fraction`` = fraction of latents that never fire on the evaluated tokens (meaningful with ≥ 10^7 tokens).
- ``rel_bias`` = E‖x̂‖² / E⟨x, x̂⟩ (arXiv 2404.16014 Eq. 10; 1 = unbiased, < 1 = shrinkage).

``spliced_metrics`` replaces model m's decoder-layer-ℓ output with the de-normalised reconstruction (forward hook;
handles layers returning a tensor, as in transformers 5, or a tuple) and reports ΔCE = CE_splice − CE_orig and
KL(p_orig ‖ p_splice), averaged over predicted positions.
"""

from __future__ import annotations

import contextlib
from typing import Any, Optional, Sequence

import torch

from lm_diff.diff import device as xdev
from lm_diff.errors import UserError
from lm_diff.models import decoder_layers, layer_output

# ----------------------------------------------------------------------------------------------------------------------
# Pure functions


def fvu(x_ND: torch.Tensor, xhat_ND: torch.Tensor) -> float:
    """Σ‖x − x̂‖² / Σ‖x − x̄‖²."""
    x, xh = x_ND.double(), xhat_ND.double()
    return float((x - xh).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def explained_variance(x_ND: torch.Tensor, xhat_ND: torch.Tensor, centred: bool = False) -> float:
    """1 − FVU, or with ``centred`` the SAELens form 1 − Σ_d Var(x − x̂)_d / Σ_d Var(x)_d."""
    if not centred:
        return 1.0 - fvu(x_ND, xhat_ND)
    x, xh = x_ND.double(), xhat_ND.double()
    return float(1.0 - (x - xh).var(0, unbiased=False).sum() / x.var(0, unbiased=False).sum())


def relative_reconstruction_bias(x_ND: torch.Tensor, xhat_ND: torch.Tensor) -> float:
    """E‖x̂‖² / E⟨x, x̂⟩."""
    x, xh = x_ND.double(), xhat_ND.double()
    return float(xh.pow(2).sum() / (x * xh).sum())


def l0(f_NL: torch.Tensor) -> float:
    return float((f_NL > 0).sum(1).double().mean())


def dead_fraction(f_NL: torch.Tensor) -> float:
    return float(((f_NL > 0).sum(0) == 0).double().mean())


def cross_entropy(logits_BTV: torch.Tensor, targets_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """Mean next-token CE over positions where ``mask_BT`` is true (logits at t predict targets at t)."""
    lp = torch.log_softmax(logits_BTV.double(), dim=-1)
    nll = -lp.gather(-1, targets_BT.unsqueeze(-1)).squeeze(-1)
    return (nll * mask_BT).sum() / mask_BT.sum().clamp_min(1)


def kl_divergence(logits_p_BTV: torch.Tensor, logits_q_BTV: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """Mean over masked positions of KL(p ‖ q) = Σ_v p (log p − log q)."""
    lp = torch.log_softmax(logits_p_BTV.double(), dim=-1)
    lq = torch.log_softmax(logits_q_BTV.double(), dim=-1)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    return (kl * mask_BT).sum() / mask_BT.sum().clamp_min(1)


class ReconAccumulator:
    """Streaming sufficient statistics (fp64) for ev / fvu / ev_centred / rel_bias per model, l0 and dead fraction."""

    def __init__(self, n_models: int, d_model: int, dict_size: int, device: Any = "cpu"):
        M, D = n_models, d_model
        self.dev = torch.device(device)   # where the statistics accumulate (batches are moved here)
        z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=self.dev)  # noqa: E731
        self.n = 0
        self.sx, self.sx2 = z(M, D), z(M)            # Σx, Σ‖x‖²
        self.se, self.se2 = z(M, D), z(M)            # Σ(x−x̂), Σ‖x−x̂‖²
        self.sxh2, self.sxxh = z(M), z(M)            # Σ‖x̂‖², Σ⟨x,x̂⟩
        self.active = 0.0
        self.fired = torch.zeros(dict_size, dtype=torch.bool, device=self.dev)

    def update(self, x_BMD: torch.Tensor, xhat_BMD: torch.Tensor, f_BL: torch.Tensor) -> None:
        x, xh, f_BL = x_BMD.to(self.dev).double(), xhat_BMD.to(self.dev).double(), f_BL.to(self.dev)
        e = x - xh
        self.n += x.shape[0]
        self.sx += x.sum(0)
        self.sx2 += x.pow(2).sum((0, 2))
        self.se += e.sum(0)
        self.se2 += e.pow(2).sum((0, 2))
        self.sxh2 += xh.pow(2).sum((0, 2))
        self.sxxh += (x * xh).sum((0, 2))
        act = f_BL > 0
        self.active += float(act.sum())
        self.fired |= act.any(0)

    def result(self) -> dict[str, Any]:
        n = max(self.n, 1)
        var_x = self.sx2 - self.sx.pow(2).sum(-1) / n          # Σ‖x − x̄‖²
        var_e = self.se2 - self.se.pow(2).sum(-1) / n          # Σ‖e − ē‖²
        fvu_m = self.se2 / var_x.clamp_min(1e-300)
        return {
            "ev": (1 - fvu_m).tolist(),
            "fvu": fvu_m.tolist(),
            "ev_centred": (1 - var_e / var_x.clamp_min(1e-300)).tolist(),
            "rel_bias": (self.sxh2 / self.sxxh).tolist(),
            "l0": self.active / n,
            "dead_fraction": float((~self.fired).double().mean()),
            "n_tokens": self.n,
        }


# ----------------------------------------------------------------------------------------------------------------------
# Store-level metrics


@torch.no_grad()
def reconstruction_metrics(cc, store, layer: Optional[int] = None, models: Sequence[int] = (0, 1),
                           split: str = "heldout", max_tokens: Optional[int] = None, batch_size: int = 4096) -> dict:
    """EV/FVU (both forms), rel_bias per model, L0 and dead fraction on ``split`` of ``store`` (inference encoding)."""
    dev = xdev.crosscoder_device(cc)   # the crosscoder's device; statistics beside it
    acc = ReconAccumulator(cc.n_models, cc.d_model, cc.dict_size, xdev.stats_device(dev))
    for item in store.iter_batches(batch_size, layer=layer, models=tuple(models), split=split):
        x = (item[0] if isinstance(item, (tuple, list)) else item).to(dev)
        if max_tokens is not None and acc.n >= max_tokens:
            break
        if max_tokens is not None:
            x = x[: max_tokens - acc.n]
        f = cc.encode(x)
        acc.update(x, cc.decode(f), f)
    if acc.n == 0:
        raise UserError(f"no {split} tokens in the activation store; capture with capture.heldout_fraction > 0")
    return acc.result()


# ----------------------------------------------------------------------------------------------------------------------
# Spliced loss


def _with_hidden(output, h: torch.Tensor):
    if isinstance(output, tuple):
        return (h,) + tuple(output[1:])
    if isinstance(output, list):
        return [h] + list(output[1:])
    return h


@contextlib.contextmanager
def _hook(layer_module: torch.nn.Module, fn):
    handle = layer_module.register_forward_hook(fn)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def _run(model, input_ids, attention_mask, layer: int, capture: Optional[list] = None, replace=None):
    """Forward pass returning logits; optionally capture or replace the layer's hidden output."""

    def fn(_mod, _inp, output):
        h = layer_output(output)
        if capture is not None:
            capture.append(h.detach())
        if replace is not None:
            return _with_hidden(output, replace(h).to(h.dtype))
        return None

    with _hook(decoder_layers(model)[layer], fn):
        out = model(input_ids=input_ids, attention_mask=attention_mask)
    return out.logits if hasattr(out, "logits") else out[0]


@torch.no_grad()
def spliced_metrics(cc, model, input_ids: torch.Tensor, layer: int, model_index: int, *,
                    attention_mask: Optional[torch.Tensor] = None, acts_BTMD: Optional[torch.Tensor] = None,
                    keep_first: bool = True) -> dict[str, float]:
    """ΔCE and KL(p_orig ‖ p_splice) for model ``model_index`` with its layer-``layer`` output replaced by the
    crosscoder's de-normalised reconstruction.

    The crosscoder encodes all M models' activations jointly, so it needs every model's layer output for the same
    tokens: pass ``model`` as the list of all M models (in crosscoder order; ``model[model_index]`` is spliced), or pass
    the spliced model alone plus ``acts_BTMD`` (paired activations of all models for ``input_ids``, e.g. from a store).
    ``keep_first`` leaves position 0 (BOS, dropped from training) unspliced. Padding (``attention_mask`` 0) is excluded.
    """
    models = list(model) if isinstance(model, (list, tuple)) else None
    target = models[model_index] if models is not None else model
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    mdev = xdev.crosscoder_device(target)   # the models' device (models.device); the crosscoder may sit elsewhere
    input_ids = input_ids.to(mdev)
    mask = attention_mask.to(mdev) if attention_mask is not None else torch.ones_like(input_ids)
    if models is not None:
        if len(models) != cc.n_models:
            raise UserError(f"spliced_metrics: got {len(models)} models for a crosscoder over {cc.n_models}")
        acts = []
        for i, m in enumerate(models):
            cap: list = []
            logits = _run(m, input_ids, mask, layer, capture=cap)
            if i == model_index:
                logits_orig = logits
            acts.append(cap[0].float())
        acts_BTMD = torch.stack(acts, dim=2)
    else:
        if acts_BTMD is None:
            raise UserError("spliced_metrics: pass all crosscoder models as a list, or acts_BTMD with every model's "
                            "activations for these tokens")
        logits_orig = _run(target, input_ids, mask, layer)
    B, T = input_ids.shape
    cdev = xdev.crosscoder_device(cc)
    recon = cc.decode(cc.encode(acts_BTMD.reshape(B * T, cc.n_models, -1).to(cdev).float()))
    recon_BTD = recon[:, model_index].reshape(B, T, -1)

    def replace(h):
        new = recon_BTD.to(h.device, h.dtype)
        if keep_first:
            new = torch.cat([h[:, :1], new[:, 1:]], dim=1)
        return new

    logits_splice = _run(target, input_ids, mask, layer, replace=replace)
    sdev = xdev.stats_device(logits_orig.device)   # CE / KL in float64 (on the CPU for MPS)
    logits_orig, logits_splice = logits_orig.to(sdev), logits_splice.to(sdev)
    pred_mask = (mask[:, :-1] * mask[:, 1:]).to(sdev, torch.float64)
    tgt = input_ids[:, 1:].to(sdev)
    ce_o = cross_entropy(logits_orig[:, :-1], tgt, pred_mask)
    ce_s = cross_entropy(logits_splice[:, :-1], tgt, pred_mask)
    kl = kl_divergence(logits_orig[:, :-1], logits_splice[:, :-1], pred_mask)
    return {"delta_ce": float(ce_s - ce_o), "kl": float(kl), "ce_orig": float(ce_o), "ce_splice": float(ce_s),
            "n_positions": int(pred_mask.sum())}
