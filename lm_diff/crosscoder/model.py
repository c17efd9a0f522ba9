"""Crosscoder over M models' residual activations: shared encoder, one decoder per model.

Shapes (suffixes): B batch tokens, M models, D d_model, L latents.

    pre_BL  = Σ_m x̃^m W_enc^m + b_enc          (x̃ = normalised activations)
    z_BL    = ReLU(pre_BL)
    x̂^m     = f_BL W_dec^m + b_dec^m

Architectures
- ``batchtopk`` (Minder et al. 2025): training keeps the top k·B entries of z_{b,j}·s_j over the whole batch, with
  s_j = Σ_m ‖d_j^m‖ (code normalisation ``CROSSCODER``). Training selects with :func:`topn_select` (a sampled lower
  bound, one comparison pass, an exact top-(k·B) over the ~1.3·k·B survivors; exact whatever the sample says) inside
  the training kernels (``forward.py``: the dense ``kernels.py`` or, on a sparse enough code, ``sparse.py``, which
  decodes and back-propagates on the selected entries only). :func:`batch_topk_threshold`
  (exact two-stage per-row top-r, then global top-k, with a checked fallback) serves ``encode``. Inference uses f = z·1[z·s > θ] with θ an EMA (β = 0.999) of the per-batch
  smallest selected z·s, tracked from ``threshold_start_step`` on. Before θ exists (θ < 0) ``encode`` falls back to
  batch top-k over the batch it is given.
- ``l1`` (Anthropic 2024): f = z; the sparsity penalty λ Σ_j f_j Σ_m ‖d_j^m‖ is added by :meth:`CrossCoder.loss`.

Decoders are **not** constrained to unit norm in either architecture: decoder norms carry the model-specificity
signal (Δnorm), and both Anthropic's and Minder's crosscoders leave them free (the norm enters s_j instead).

Activation normalisation (stored as buffers in the checkpoint, applied by :meth:`encode` / :meth:`decode`):
``sqrt_d`` scales each model so E‖x^m‖ = √D; ``centre_scale`` subtracts each model's mean, then applies one global scale
so the models' mean centred norm is √D; ``none``. :meth:`fold_normalisation` folds it into the weights; the buffer
``code_scale_M`` then keeps s_j, the top-k ranking and :meth:`decoder_norms` (hence Δnorm) unchanged.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from lm_diff.crosscoder import forward as _forward
from lm_diff.crosscoder.dist import LOCAL, DistCtx
from lm_diff.crosscoder.files import load_weights, read_config
from lm_diff.crosscoder.kernels import train_threads
from lm_diff.crosscoder.topk import _sample_stride, batch_topk_threshold, topn_select
from lm_diff.errors import UserError
from lm_diff.io import save_safetensors, write_json

# re-exported: ``from lm_diff.crosscoder.model import DistCtx, topn_select, ...`` keeps working after the split
__all__ = ["ARCHS", "CONFIG_FILE", "FORMAT", "LOCAL", "LOSSES", "NORMALISATIONS", "WEIGHTS_FILE", "CrossCoder",
           "DistCtx", "_sample_stride", "batch_topk_threshold", "topn_select", "train_threads"]

FORMAT = "lm_diff.crosscoder/v1"
WEIGHTS_FILE = "crosscoder.safetensors"
CONFIG_FILE = "crosscoder.json"
ARCHS = ("batchtopk", "l1")
NORMALISATIONS = ("sqrt_d", "centre_scale", "none")
LOSSES = ("mse", "unsquared")

# ----------------------------------------------------------------------------------------------------------------------


class CrossCoder(nn.Module):
    """Crosscoder over ``n_models`` activation streams of width ``d_model`` with ``dict_size`` latents.

    ``encode(acts_BMD)`` takes raw activations (normalised inside); ``decode(f_BL)`` returns raw activations. Pass
    ``normalised=True`` / ``denormalise=False`` to work in the normalised training space.
    """

    def __init__(
        self,
        d_model: int,
        n_models: int = 2,
        dict_size: int = 1024,
        arch: str = "batchtopk",
        k: int = 32,
        *,
        init_scale: float = 0.1,
        normalisation: str = "none",
        loss: Optional[str] = None,
        threshold_beta: float = 0.999,
        threshold_start_step: int = 1000,
        row_budget_mult: int = 4,
        seed: int = 0,
        exclusive: int = 0,
    ):
        super().__init__()
        if arch not in ARCHS:
            raise UserError(f"crosscoder arch must be one of {ARCHS}, got {arch!r}")
        if normalisation not in NORMALISATIONS:
            raise UserError(f"crosscoder normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
        loss = loss or ("unsquared" if arch == "batchtopk" else "mse")
        if loss not in LOSSES:
            raise UserError(f"crosscoder loss must be one of {LOSSES}, got {loss!r}")
        if not 0 < k <= dict_size:
            raise UserError(f"crosscoder k must be in [1, dict_size={dict_size}], got {k}")
        self.d_model, self.n_models, self.dict_size = int(d_model), int(n_models), int(dict_size)
        self.arch, self.k, self.loss_form = arch, int(k), loss
        self.init_scale, self.normalisation = float(init_scale), normalisation
        self.threshold_beta, self.threshold_start_step = float(threshold_beta), int(threshold_start_step)
        self.row_budget_mult, self.seed = int(row_budget_mult), int(seed)
        M, D, L = self.n_models, self.d_model, self.dict_size
        self.exclusive = int(exclusive)
        if self.exclusive < 0 or self.exclusive * M >= L:
            raise UserError(f"crosscoder exclusive must be in [0, dict_size / n_models) = [0, {-(-L // M)}), "
                            f"got {exclusive}")

        g = torch.Generator().manual_seed(seed)
        v_LD = torch.randn(L, D, generator=g)
        v_LD = v_LD / v_LD.norm(dim=1, keepdim=True) * init_scale
        self.W_enc_MDL = nn.Parameter(v_LD.t().unsqueeze(0).repeat(M, 1, 1).contiguous())
        self.b_enc_L = nn.Parameter(torch.zeros(L))
        self.W_dec_LMD = nn.Parameter(v_LD.unsqueeze(1).repeat(1, M, 1).contiguous())
        self.b_dec_MD = nn.Parameter(torch.zeros(M, D))
        self.register_buffer("threshold", torch.tensor(-1.0))
        self.register_buffer("norm_mean_MD", torch.zeros(M, D))
        self.register_buffer("norm_scale_M", torch.ones(M))
        self.register_buffer("code_scale_M", torch.ones(M))
        self.register_buffer("folded", torch.tensor(0, dtype=torch.int32))
        self.register_buffer("_dedicated_LM", self._dedicated_mask(), persistent=False)
        self.gemm_dtype: Optional[torch.dtype] = None
        """Operand dtype of the training GEMMs (``None`` = fp32; ``torch.bfloat16`` = mixed precision, set by the
        trainer on CUDA). A runtime setting, not saved: inference (``encode``/``decode``) always runs in fp32."""
        self.kernel = "auto"
        """BatchTopK training kernels: ``auto`` (sparse on the CPU in fp32 when the code is sparse enough, see
        ``crosscoder/sparse.py``), ``sparse`` or ``dense``. A runtime setting, not saved; results agree to rounding."""
        self._scratch: dict[str, torch.Tensor] = {}   # B×L work buffers the sparse kernels reuse across steps
        self.project_()

    # ------------------------------------------------------------------------------------------------------------------
    # Dedicated latents

    def dedicated_LM(self) -> torch.Tensor:
        """Bool [L, M]: which models each latent decodes into (all True for shared latents). With ``exclusive`` = n,
        latents ``L - (M - m) n … L - (M - m - 1) n - 1`` decode into model m only."""
        return self._dedicated_LM

    def _dedicated_mask(self) -> torch.Tensor:
        L, M, n = self.dict_size, self.n_models, self.exclusive
        mask = torch.ones(L, M, dtype=torch.bool)
        for m in range(M):
            rows = slice(L - (M - m) * n, L - (M - m - 1) * n)
            mask[rows] = False
            mask[rows, m] = True
        return mask

    @torch.no_grad()
    def project_(self) -> None:
        """Keep the dedicated-latent constraints after an optimiser step (no-op for a standard crosscoder): dedicated
        latents have zero decoders for the other models; shared latents one decoder, tied across models."""
        if self.exclusive == 0:
            return
        if bool(self.folded):
            raise RuntimeError("project_ acts on training-space decoders; call it before fold_normalisation")
        W = self.W_dec_LMD
        n_shared = self.dict_size - self.n_models * self.exclusive
        W[:n_shared] = W[:n_shared].mean(1, keepdim=True)
        W.mul_(self._dedicated_LM[:, :, None].to(W.dtype))

    # ------------------------------------------------------------------------------------------------------------------
    # Config and persistence

    def config(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "d_model": self.d_model,
            "n_models": self.n_models,
            "dict_size": self.dict_size,
            "arch": self.arch,
            "k": self.k,
            "init_scale": self.init_scale,
            "normalisation": self.normalisation,
            "loss": self.loss_form,
            "threshold_beta": self.threshold_beta,
            "threshold_start_step": self.threshold_start_step,
            "row_budget_mult": self.row_budget_mult,
            "seed": self.seed,
            "exclusive": self.exclusive,
        }

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "CrossCoder":
        c = {k: v for k, v in cfg.items() if k != "format"}
        return cls(**c)

    def save(self, directory: str | Path, metadata: Optional[dict[str, Any]] = None) -> Path:
        """Write ``crosscoder.safetensors`` then ``crosscoder.json`` (atomically; the JSON marks a complete save)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_safetensors(directory / WEIGHTS_FILE, dict(self.state_dict()), metadata={"format": FORMAT})
        cfg = self.config()
        if metadata:
            cfg["metadata"] = metadata
        write_json(directory / CONFIG_FILE, cfg)
        return directory

    @classmethod
    def load(cls, directory: str | Path, map_location: str = "cpu") -> "CrossCoder":
        directory = Path(directory)
        cfg_path, w_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        if not cfg_path.exists() or not w_path.exists():
            raise UserError(f"{directory}: no crosscoder here (expected {CONFIG_FILE} and {WEIGHTS_FILE}); train one first")
        cfg = read_config(cfg_path, FORMAT)
        cfg.pop("metadata", None)
        dev = torch.device(map_location)
        cc = cls.from_config(cfg).to(dev)
        load_weights(w_path, dev, cc.load_state_dict)
        return cc

    # ------------------------------------------------------------------------------------------------------------------
    # Normalisation

    @torch.no_grad()
    def set_normalisation(self, mean_MD: Optional[torch.Tensor], mean_norm_M: torch.Tensor) -> None:
        """Set the buffers from statistics in raw space.

        ``sqrt_d``: ``mean_norm_M`` = E‖x^m‖ (raw); ``centre_scale``: ``mean_MD`` = E x^m and ``mean_norm_M`` =
        E‖x^m − mean^m‖ (centred); one global scale √D / mean_m(E‖x^m − mean^m‖).
        """
        D = self.d_model
        mean_norm_M = torch.as_tensor(mean_norm_M, dtype=torch.float32).reshape(self.n_models)
        if self.normalisation == "none":
            self.norm_mean_MD.zero_()
            self.norm_scale_M.fill_(1.0)
        elif self.normalisation == "sqrt_d":
            self.norm_mean_MD.zero_()
            self.norm_scale_M.copy_(math.sqrt(D) / mean_norm_M.clamp_min(1e-12))
        else:
            if mean_MD is None:
                raise UserError("centre_scale normalisation needs the per-model mean")
            self.norm_mean_MD.copy_(torch.as_tensor(mean_MD, dtype=torch.float32))
            self.norm_scale_M.fill_(math.sqrt(D) / float(mean_norm_M.mean().clamp_min(1e-12)))

    @torch.no_grad()
    def fit_normalisation(self, acts_NMD: torch.Tensor) -> None:
        """Estimate the normalisation from a sample of raw activations."""
        x = acts_NMD.to(torch.float32)
        if self.normalisation == "centre_scale":
            mean = x.mean(0)
            self.set_normalisation(mean, (x - mean).norm(dim=-1).mean(0))
        else:
            self.set_normalisation(None, x.norm(dim=-1).mean(0))

    def normalise(self, acts_BMD: torch.Tensor) -> torch.Tensor:
        if self.normalisation == "none" or bool(self.folded):
            return acts_BMD.to(torch.float32)
        return (acts_BMD.to(torch.float32) - self.norm_mean_MD) * self.norm_scale_M[:, None]

    def denormalise(self, acts_BMD: torch.Tensor) -> torch.Tensor:
        if self.normalisation == "none" or bool(self.folded):
            return acts_BMD
        return acts_BMD / self.norm_scale_M[:, None] + self.norm_mean_MD

    @torch.no_grad()
    def fold_normalisation(self) -> "CrossCoder":
        """Fold the normalisation into the weights so ``encode``/``decode`` act on raw activations directly.

        Reconstructions, latent activations, the BatchTopK ranking s_j and ``decoder_norms()`` are unchanged (the
        latter two via ``code_scale_M``). Raw ``W_dec_LMD`` norms afterwards live in raw activation units.
        """
        if bool(self.folded) or self.normalisation == "none":
            self.folded.fill_(1)
            return self
        s_M, mu_MD = self.norm_scale_M.clone(), self.norm_mean_MD.clone()
        W = self.W_enc_MDL * s_M[:, None, None]
        self.b_enc_L.sub_(torch.einsum("md,mdl->l", mu_MD, W))
        self.W_enc_MDL.copy_(W)
        self.W_dec_LMD.div_(s_M[None, :, None])
        self.b_dec_MD.copy_(self.b_dec_MD / s_M[:, None] + mu_MD)
        self.code_scale_M.mul_(s_M)
        self.folded.fill_(1)
        return self

    # ------------------------------------------------------------------------------------------------------------------
    # Core

    def decoder_norms(self) -> torch.Tensor:
        """‖d_j^m‖ in the normalised (training) space, shape [L, M]."""
        return self.W_dec_LMD.norm(dim=-1) * self.code_scale_M

    def code_norm_L(self) -> torch.Tensor:
        """s_j = Σ_m ‖d_j^m‖ (normalised space)."""
        return self.decoder_norms().sum(dim=1)

    def delta_norm(self) -> torch.Tensor:
        """Δ_j in the paper orientation (1 = model index 1 only, 0 = model index 0 only); needs n_models == 2."""
        if self.n_models != 2:
            raise UserError("delta_norm needs a crosscoder over exactly two models")
        n = self.decoder_norms().detach()
        a, b = n[:, 0], n[:, 1]
        return 0.5 * ((b - a) / torch.maximum(a, b).clamp_min(1e-12) + 1.0)

    def pre_acts(self, x_BMD: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations from normalised inputs: one GEMM over the flattened [B, M·D] input."""
        B = x_BMD.shape[0]
        return torch.addmm(self.b_enc_L, x_BMD.reshape(B, -1), self.W_enc_MDL.reshape(-1, self.dict_size))

    def encode(self, acts_BMD: torch.Tensor, normalised: bool = False, use_threshold: bool = True) -> torch.Tensor:
        """Latent activations f_BL (inference: EMA threshold for BatchTopK once it exists)."""
        x = acts_BMD if normalised else self.normalise(acts_BMD)
        z = torch.relu(self.pre_acts(x))
        if self.arch == "l1":
            return z
        s = self.code_norm_L()
        scores = z * s
        if use_threshold and float(self.threshold) >= 0:
            return torch.where(scores > self.threshold, z, 0.0)
        thr, _ = batch_topk_threshold(scores, self.k * z.shape[0], self.row_budget_mult * self.k)
        return torch.where((scores >= thr) & (scores > 0), z, 0.0)

    def decode(self, f_BL: torch.Tensor, denormalise: bool = True) -> torch.Tensor:
        """Reconstruction acts_BMD from latent activations."""
        B = f_BL.shape[0]
        out = torch.addmm(self.b_dec_MD.reshape(-1), f_BL, self.W_dec_LMD.reshape(self.dict_size, -1))
        out = out.reshape(B, self.n_models, self.d_model)
        return self.denormalise(out) if denormalise else out

    def forward(self, acts_BMD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction in raw space, f_BL) with inference-time encoding."""
        f = self.encode(acts_BMD)
        return self.decode(f), f

    # ------------------------------------------------------------------------------------------------------------------
    # Training

    def train_forward(
        self, x_BMD: torch.Tensor, k: Optional[int] = None, dist: DistCtx = LOCAL, keep_pre: bool = True,
        dead_L: Optional[torch.Tensor] = None, k_aux: int = 0,
    ) -> dict[str, Any]:
        """Training forward on normalised inputs (this rank's rows). BatchTopK selects over the global batch.

        Returns ``pre`` (pre-activations, needed by the dense :meth:`aux_loss`; None with ``keep_pre=False``, which
        saves one B×L buffer, and on the sparse path), ``f`` (with grad on the dense path), ``xhat`` [B, M, D], ``thr`` (selection threshold
        on z·s, a 0-d tensor; -1 for L1), ``s`` (code norms; with grad for L1 only, where the sparsity loss needs it),
        and for BatchTopK ``sel`` (this rank's selected entries as ascending flat indices into [B, L]),
        ``topk_candidates`` (global number of candidates of the exact top-k; 0 = flat top-k over every score) and
        ``sparse`` (which kernels ran, see :attr:`kernel`); for L1 ``sparsity`` (= :meth:`sparsity_loss` of f and s
        over a global batch of B·world rows, with gradient). The sparse path selects the auxiliary loss's entries in
        the same forward: pass ``dead_L`` and ``k_aux`` here when :meth:`aux_loss` follows.
        """
        return _forward.train_forward(self, x_BMD, k, dist, keep_pre, dead_L, k_aux)

    def recon_loss(self, x_BMD: torch.Tensor, xhat_BMD: torch.Tensor, n_global: int) -> torch.Tensor:
        """``mse``: (1/B) Σ_b Σ_m ‖x−x̂‖² (Anthropic); ``unsquared``: (1/(B·M)) Σ_{b,m} ‖x−x̂‖₂ (crosscoder_learning).

        Sums this rank's rows and divides by the global batch ``n_global`` (so summed gradients equal one process).
        """
        e = xhat_BMD - x_BMD
        if self.loss_form == "mse":
            return e.pow(2).sum() / n_global
        return e.pow(2).sum(-1).clamp_min(1e-12).sqrt().sum() / (n_global * self.n_models)

    def sparsity_loss(self, f_BL: torch.Tensor, s_L: torch.Tensor, n_global: int) -> torch.Tensor:
        """(1/B) Σ_b Σ_j f_bj s_j (L1 arch; gradient flows into the decoder norms)."""
        return (f_BL.sum(0) * s_L).sum() / n_global

    def aux_loss(
        self, x_BMD: torch.Tensor, out: dict[str, Any], dead_L: torch.Tensor, k_aux: int, dist: DistCtx = LOCAL
    ) -> torch.Tensor:
        """Auxiliary dead-latent loss: reconstruct the detached residual e with the top-k_aux dead latents per token.

        L_aux = mean_b ‖e_b − Σ_{j∈aux} f_bj d_j‖² / mean_b ‖e_b − ē‖²  (models flattened together; no decoder bias).
        """
        return _forward.aux_loss(self, x_BMD, out, dead_L, k_aux, dist)

    @torch.no_grad()
    def update_threshold(self, thr: torch.Tensor, step: int) -> None:
        """EMA of the per-batch smallest selected z·s, from ``threshold_start_step`` on."""
        if self.arch != "batchtopk" or step < self.threshold_start_step or float(thr) <= 0:
            return
        if float(self.threshold) < 0:
            self.threshold.copy_(thr)
        else:
            self.threshold.mul_(self.threshold_beta).add_((1 - self.threshold_beta) * thr)
