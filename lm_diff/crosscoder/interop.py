"""Save/load crosscoders in the crosscoder_learning / dictionary_learning ``CrossCoder`` layout (safetensors only).

Layout written by :func:`save_dictionary_learning` (what ``PyTorchModelHubMixin.save_pretrained`` produces for
``dictionary_learning.dictionary.CrossCoder`` / ``BatchTopKCrossCoder``):

- ``model.safetensors``: ``encoder.weight`` [M, D, L], ``encoder.bias`` [L], ``decoder.weight`` [M, L, D],
  ``decoder.bias`` [M, D], ``code_normalization_id`` (int64; 1 = ``CROSSCODER``, s_j = Σ_m ‖d_j^m‖) and, for BatchTopK,
  ``k`` (int32) and ``threshold`` (float32; −1 = unset; their inference rule is z·s > θ, as ours).
- ``config.json``: ``activation_dim``, ``dict_size``, ``num_encoder_layers`` (= M), ``k``, ``norm_init_scale``,
  ``code_normalization`` ("CROSSCODER"), ``class_name``, plus an ``lm_diff`` block holding what their format lacks
  (architecture, loss, activation normalisation buffers) so a round trip is lossless.

Weights are stored in the crosscoder's **normalised** space (their encoder applies no normalisation): feed their model
activations normalised as recorded in ``config.json["lm_diff"]``, or call ``cc.fold_normalisation()`` before saving
(exact reconstructions; their s_j then uses raw-unit decoder norms, so their BatchTopK ranking and Δ differ when the
per-model scales differ).

Convention trap: their analysis column ``dec_norm_diff`` = ½((‖d^A‖ − ‖d^B‖)/max + 1) = **1 − Δ** (paper Δ, 1 = B only);
use :func:`delta_from_dec_norm_diff` / :func:`dec_norm_diff`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from lm_diff.crosscoder.model import CrossCoder
from lm_diff.errors import UserError
from lm_diff.io import save_safetensors, write_json

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CROSSCODER_CODE_NORM_ID = 1  # dictionary_learning CodeNormalization.CROSSCODER (enum auto() starts at 1)


def dec_norm_diff(cc: CrossCoder) -> torch.Tensor:
    """crosscoder_learning's ``dec_norm_diff`` column (= 1 − Δ; 0 = model-1-only)."""
    return 1.0 - cc.delta_norm()


def delta_from_dec_norm_diff(x):
    """Paper Δnorm (1 = fine-tune only) from a crosscoder_learning ``dec_norm_diff`` value or tensor."""
    return 1.0 - x


def save_dictionary_learning(cc: CrossCoder, directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not torch.allclose(cc.code_scale_M, torch.ones_like(cc.code_scale_M)):
        raise UserError("this crosscoder's normalisation was folded into its weights; their format cannot express the "
                        "ranking weights (code_scale_M): save the crosscoder before folding instead")
    t = {
        "encoder.weight": cc.W_enc_MDL.detach(),
        "encoder.bias": cc.b_enc_L.detach(),
        "decoder.weight": cc.W_dec_LMD.detach().permute(1, 0, 2),
        "decoder.bias": cc.b_dec_MD.detach(),
        "code_normalization_id": torch.tensor(CROSSCODER_CODE_NORM_ID, dtype=torch.int64),
    }
    if cc.arch == "batchtopk":
        t["k"] = torch.tensor(cc.k, dtype=torch.int32)
        t["threshold"] = cc.threshold.detach().to(torch.float32)
    save_safetensors(directory / WEIGHTS, t, metadata={"format": "pt"})
    write_json(directory / CONFIG, {
        "class_name": "BatchTopKCrossCoder" if cc.arch == "batchtopk" else "CrossCoder",
        "activation_dim": cc.d_model,
        "dict_size": cc.dict_size,
        "num_encoder_layers": cc.n_models,
        "k": cc.k,
        "norm_init_scale": cc.init_scale,
        "decoder_type": "linear",
        "same_init_for_all_layers": True,
        "init_with_transpose": True,
        "encoder_layers_indices": None,
        "num_decoder_output_layers": None,
        "code_normalization": "CROSSCODER",
        "code_normalization_alpha_sae": 1.0,
        "code_normalization_alpha_cc": 0.1,
        "lm_diff": {
            "crosscoder": cc.config(),
            "norm_mean_MD": cc.norm_mean_MD.tolist(),
            "norm_scale_M": cc.norm_scale_M.tolist(),
            "folded": int(cc.folded),
            "dec_norm_diff_convention": "dec_norm_diff = 1 - delta (delta: 1 = model index 1 only)",
        },
    })
    return directory


def load_dictionary_learning(directory: str | Path) -> CrossCoder:
    """Load a dictionary_learning ``CrossCoder`` / ``BatchTopKCrossCoder`` saved as safetensors (never pickle)."""
    directory = Path(directory)
    w_path, c_path = directory / WEIGHTS, directory / CONFIG
    if not w_path.exists():
        pickles = [p.name for p in directory.glob("*.pt")] + [p.name for p in directory.glob("*.bin")]
        hint = (f"; found {pickles}: lm_diff never unpickles checkpoints, convert them to safetensors first"
                if pickles else "")
        raise UserError(f"{directory}: no {WEIGHTS}{hint}")
    t = load_file(str(w_path))
    cfg = json.loads(c_path.read_text(encoding="utf-8")) if c_path.exists() else {}
    code_norm = str(cfg.get("code_normalization", "CROSSCODER")).upper()
    cn_id = int(t["code_normalization_id"]) if "code_normalization_id" in t else CROSSCODER_CODE_NORM_ID
    if code_norm != "CROSSCODER" or cn_id != CROSSCODER_CODE_NORM_ID:
        raise UserError(f"{directory}: code_normalization {code_norm} (id {cn_id}) is not supported; lm_diff crosscoders "
                        "use CROSSCODER (s_j = sum of per-model decoder norms)")
    M, D, L = t["encoder.weight"].shape
    ours = cfg.get("lm_diff", {})
    if ours.get("crosscoder"):
        c = dict(ours["crosscoder"])
        c.pop("format", None)
        cc = CrossCoder(**c)
    else:
        is_btk = "k" in t or "threshold" in t or cfg.get("class_name") == "BatchTopKCrossCoder"
        k = int(t["k"]) if "k" in t else int(cfg.get("k") or min(100, L))
        cc = CrossCoder(D, M, L, "batchtopk" if is_btk else "l1", k=k,
                        init_scale=float(cfg.get("norm_init_scale") or 1.0))
    if (cc.n_models, cc.d_model, cc.dict_size) != (M, D, L):
        raise UserError(f"{directory}: weights are [M={M}, D={D}, L={L}] but config.json says otherwise")
    with torch.no_grad():
        cc.W_enc_MDL.copy_(t["encoder.weight"])
        cc.b_enc_L.copy_(t["encoder.bias"])
        cc.W_dec_LMD.copy_(t["decoder.weight"].permute(1, 0, 2))
        cc.b_dec_MD.copy_(t["decoder.bias"])
        if "threshold" in t:
            cc.threshold.copy_(t["threshold"].reshape(()).float())
        if "norm_mean_MD" in ours:
            cc.norm_mean_MD.copy_(torch.tensor(ours["norm_mean_MD"]))
            cc.norm_scale_M.copy_(torch.tensor(ours["norm_scale_M"]))
            cc.folded.fill_(int(ours.get("folded", 0)))
    return cc
