"""Output tokens a latent boosts or suppresses in each model (docs/method.md#latent-logits).

For latent j and model m the direction is the crosscoder's decoder row ``W_dec_LMD[j, m]``; its direct effect on the
logits is ``W_U^m (g^m ⊙ d_j^m)``, with ``W_U^m`` the model's unembedding and ``g^m`` the elementwise weight of its
final norm. The norm's division by the residual's RMS is a nonlinearity of the whole residual, not of one direction,
so it is left out: the values rank tokens within a latent and a model, they are not logit changes of a real forward
pass. Models are taken one at a time (the caller loads, uses and drops each).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

__all__ = ["unembedding", "top_logits", "latent_logits"]

_NORM_NAMES = ("norm", "final_layernorm", "ln_f", "final_layer_norm")


def unembedding(model: Any) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(W_U_VD, the final norm's weight g_D or None) of a Hugging Face causal LM."""
    W_U_VD = model.get_output_embeddings().weight.detach()
    base = getattr(model, "base_model", model)
    for holder in (base, getattr(base, "decoder", None), getattr(base, "transformer", None)):
        for name in _NORM_NAMES:
            mod = getattr(holder, name, None) if holder is not None else None
            w = getattr(mod, "weight", None)
            if isinstance(w, torch.Tensor) and w.ndim == 1 and w.shape[0] == W_U_VD.shape[1]:
                w = w.detach().float()
                # Gemma-style RMSNorm stores the weight as an offset from 1.
                if getattr(mod, "add_unit_offset", False) or type(mod).__name__.startswith("Gemma"):
                    w = w + 1.0
                return W_U_VD, w
    return W_U_VD, None


def top_logits(dirs_KD: torch.Tensor, W_U_VD: torch.Tensor, g_D: Optional[torch.Tensor], k: int = 10,
               chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` boosted and suppressed token ids and values per direction: (pos_ids_KN, pos_vals_KN, neg_ids_KN,
    neg_vals_KN), N = min(k, V); neg values are the most negative, ascending."""
    W = W_U_VD.float()
    d = dirs_KD.float().to(W.device)
    if g_D is not None:
        d = d * g_D.to(W.device)
    k = min(k, W.shape[0])
    out: list[list[torch.Tensor]] = [[], [], [], []]
    for s in range(0, d.shape[0], chunk):
        logits_KV = d[s:s + chunk] @ W.T
        pv, pi = logits_KV.topk(k, dim=1)
        nv, ni = logits_KV.topk(k, dim=1, largest=False)
        for lst, t in zip(out, (pi, pv, ni, nv)):
            lst.append(t.cpu())
    if not out[0]:
        empty = torch.zeros(0, k)
        return empty.long(), empty, empty.long(), empty
    return tuple(torch.cat(x) for x in out)  # type: ignore[return-value]


def latent_logits(W_dec_LMD: torch.Tensor, latents: Sequence[int], slot: int, model: Any, tokenizer: Any = None,
                  k: int = 10) -> dict[int, dict[str, list]]:
    """{latent: {"pos": [[token, value], ...], "neg": [...]}} for model ``model`` at crosscoder slot ``slot``."""
    if not len(latents):
        return {}
    W_U_VD, g_D = unembedding(model)
    idx = torch.as_tensor(list(latents), dtype=torch.long)
    dirs_KD = W_dec_LMD.detach()[idx, slot]
    pi, pv, ni, nv = top_logits(dirs_KD, W_U_VD, g_D, k)

    def tok(i: int) -> str:
        return tokenizer.decode([i]) if tokenizer is not None else str(i)

    return {int(j): {"pos": [[tok(int(a)), round(float(b), 4)] for a, b in zip(pi[r], pv[r])],
                     "neg": [[tok(int(a)), round(float(b), 4)] for a, b in zip(ni[r], nv[r])]}
            for r, j in enumerate(idx.tolist())}
