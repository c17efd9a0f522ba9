"""Capture forwards: the two backends, batch tensors, and the non-finite guard.

Backends (``CaptureConfig.backend``):

- ``nnsight`` (default, the supported interface): each model is wrapped once in ``nnsight.TransformersModel`` (with a
  *copy* of the tokenizer: nnsight sets ``padding_side="left"`` on the tokenizer it is given, which would silently change
  a tokenizer shared with lm-eval), traced on the pre-tokenised ids, saves ``layers[ℓ].output`` and calls
  ``tracer.stop()`` after the last layer. It also accepts models that are already ``TransformersModel`` envoys.
  nnsight stays an in-function import: it is only needed by this backend (``hooks`` works without it).
  ``benchmarks/bench_capture.py`` (Gemma2 6 layers d=512, layer 3, 8192 tokens, 2 shared vCPUs under heavy
  contention) gave capture/2-HF-forward throughput ratios of 1.96 and 1.44 for nnsight and 1.59 and 2.04 for hooks in
  two runs: the backends are within the machine's noise of each other (docs/method.md#nnsight-padding: nnsight on pre-tokenised ids
  costs ~1.0-1.2x a plain forward, a fixed ~1-6 ms per trace), so the supported nnsight path stays the default.
- ``hooks``: plain torch forward hooks on the decoder layers; the last one raises a private exception to stop the
  forward. No dependency on nnsight internals; use it when an architecture trips nnsight's tracing.

Both backends produce identical activations (tested). Every batch's kept activations are checked for NaN/inf: the
first non-finite value stops the capture with one ``UserError`` naming the model, layer, document and token.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any, Sequence

import torch

from lm_diff.errors import UserError
from lm_diff.models import decoder_layers, decoder_layers_path, layer_output

META_COLUMNS = ("token_id", "doc_id", "position", "source_id", "template", "heldout")


class _Stop(Exception):
    """Raised by the last forward hook to skip the rest of the forward."""


def unwrap(model: Any) -> Any:
    """The torch module behind a model (nnsight envoys keep it in ``_module``)."""
    return getattr(model, "_module", model)


class HookRunner:
    def __init__(self, model: Any, layers: Sequence[int]):
        self.model = unwrap(model)
        self.layers = list(layers)
        self.mods = decoder_layers(self.model)

    def __call__(self, inputs: dict) -> dict[int, Any]:
        saved: dict[int, Any] = {}
        last = self.layers[-1]
        handles = []

        def make(layer):
            def hook(_mod, _inp, out):
                saved[layer] = layer_output(out)
                if layer == last:
                    raise _Stop

            return hook

        try:
            for layer in self.layers:
                handles.append(self.mods[layer].register_forward_hook(make(layer)))
            try:
                self.model(**inputs, use_cache=False)
            except _Stop:
                pass
        finally:
            for h in handles:
                h.remove()
        return saved


class NNsightRunner:
    def __init__(self, model: Any, tokenizer: Any, layers: Sequence[int]):
        from nnsight import TransformersModel  # noqa: PLC0415 - optional backend; the hooks backend needs no nnsight

        if isinstance(model, TransformersModel):
            self.lm = model
        else:
            # a private copy: nnsight switches the tokenizer it holds to left padding (docs/method.md#nnsight-padding)
            self.lm = TransformersModel(model, tokenizer=copy.deepcopy(tokenizer))
        self.path = decoder_layers_path(unwrap(model))
        self.layers = list(layers)

    def __call__(self, inputs: dict) -> dict[int, Any]:
        env = self.lm
        for part in self.path.split("."):
            env = getattr(env, part)
        saved = {}
        with self.lm.trace(dict(inputs), use_cache=False) as tracer:
            for layer in self.layers:
                saved[layer] = layer_output(env[layer].output).save()
            tracer.stop()
        return dict(saved)


def make_runner(model: Any, tokenizer: Any, layers: Sequence[int], backend: str):
    return NNsightRunner(model, tokenizer, layers) if backend == "nnsight" else HookRunner(model, layers)


def model_device(model: Any) -> torch.device:
    """Where inputs go: the device of the first parameter (accelerate moves them on with ``device_map="auto"``)."""
    try:
        return next(unwrap(model).parameters()).device
    except StopIteration:
        return torch.device("cpu")


def model_identity(model: Any) -> dict:
    """A cheap identity of loaded weights: config hash + a strided sum of the input embeddings."""
    m = unwrap(model)
    w = m.get_input_embeddings().weight.detach().flatten()
    step = max(1, w.numel() // 65536)
    cfg = getattr(m, "config", None)
    cfg_json = cfg.to_json_string(use_diff=False) if cfg is not None else ""
    # the name is not part of the fingerprint: the same weights loaded from another path resume fine
    return {"config": hashlib.sha256(cfg_json.encode()).hexdigest()[:16],
            "weights": float(w[::step].to(torch.float64).sum())}


def model_label(model: Any, i: int) -> str:
    m = unwrap(model)
    return str(getattr(m, "name_or_path", "") or getattr(getattr(m, "config", None), "_name_or_path", "") or f"model{i}")


def batch_tensors(batch: Sequence[tuple], prefix: Sequence[int], pad_id: int):
    """``(ids_BT, mask_BT, keep_BT)`` of a batch of chunks: right-padded ids with the prefix, the attention mask, and
    the positions kept in the store (content tokens: no prefix, no padding)."""
    P = len(prefix)
    T = P + max(len(c[2]) for c in batch)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), T), dtype=torch.long)
    for r, (_, _, cids, _) in enumerate(batch):
        ids[r, :P] = torch.tensor(list(prefix), dtype=torch.long)
        ids[r, P:P + len(cids)] = torch.from_numpy(cids)
        mask[r, :P + len(cids)] = 1
    keep = mask.bool()
    keep[:, :P] = False  # drop BOS / prefix positions
    return ids, mask, keep


def batch_meta(batch: Sequence[tuple], doc_rows: dict[int, dict]) -> dict[str, list]:
    """Per-token metadata columns of a batch (one tensor per chunk and column, in store order)."""
    cols: dict[str, list] = {k: [] for k in META_COLUMNS}
    for doc_id, start, cids, tmpl in batch:
        row = doc_rows[doc_id]
        n = len(cids)
        cols["token_id"].append(torch.from_numpy(cids.copy()))
        cols["doc_id"].append(torch.full((n,), doc_id, dtype=torch.int32))
        cols["position"].append(torch.arange(start, start + n, dtype=torch.int32))
        cols["source_id"].append(torch.full((n,), row["source_id"], dtype=torch.int32))
        cols["template"].append(torch.from_numpy(tmpl.copy()))
        cols["heldout"].append(torch.full((n,), row["heldout"], dtype=torch.bool))
    return cols


def forward_batch(runner: Any, device: Any, ids: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor,
                  layers: Sequence[int], name: str, batch: Sequence[tuple], n_prefix: int) -> dict[int, torch.Tensor]:
    """Kept activations of one batch as CPU fp32 ``[n, D]`` per layer; UserError at the first non-finite value."""
    inputs = {"input_ids": ids.to(device)}
    if not bool(mask.all()):
        inputs["attention_mask"] = mask.to(device)
    saved = runner(inputs)
    out = {}
    for layer in layers:
        h_BTD = saved[layer].detach()
        rows_ND = h_BTD[keep.to(h_BTD.device)]
        if not bool(torch.isfinite(rows_ND).all()):
            bad_BT = ~torch.isfinite(h_BTD).all(-1).cpu() & keep
            r, t = (int(v) for v in bad_BT.nonzero()[0])
            doc_id, start, cids, _ = batch[r]
            pos = start + t - n_prefix
            raise UserError(
                f"capture: model {name} produced a non-finite activation (NaN or inf) at layer {layer}, document "
                f"{doc_id}, token {pos} (id {int(cids[pos - start])}); nothing of this shard was written. Check the "
                f"model's weights, or load it in a wider dtype (models.dtype: float32 or bfloat16 instead of float16)")
        out[layer] = rows_ND.to("cpu", torch.float32)
    return out
