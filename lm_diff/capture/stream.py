"""Streaming capture → train: activations computed on the fly, for stores that do not fit on disk.

``ActivationStream(models, tokenizer, docs, layers, cfg)`` reads like an ``ActivationStore``: ``iter_batches`` (same
arguments), ``stats``, ``layers``, ``n_models``, ``d_model``, ``n_tokens``, ``models``. It plans the same chunks,
batches and shards as ``capture`` and computes a shard (every model's forward on its batches, cast to
``cfg.dtype`` exactly as a stored shard) only when the batching asks for it, then hands it to the store's own batching
(``store.shard_batches``): one shard plus the shuffle buffer in memory, nothing on disk. For the same settings it
yields the batches of the captured store bit for bit, so ``crosscoder.train.train_crosscoder(stream, ...)`` trains
the same crosscoder as on the store.

Costs: every model is resident (each batch needs all of them; there is no store to join passes), and each epoch
recomputes the forwards. ``stats`` (the trainer's normalisation) is exact over all shards by default, one extra pass;
``stats_shards=n`` estimates it from the first n shards instead (then the result differs from the store's).
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence

import torch

from lm_diff.capture.forward import (
    batch_meta,
    batch_tensors,
    forward_batch,
    make_runner,
    model_device,
    model_label,
    unwrap,
)
from lm_diff.capture.store import (
    META_KEYS,
    merge_sums,
    model_part,
    pick_layer,
    shard_batches,
    shard_sums,
    shard_tensors,
)
from lm_diff.capture.tokenize import budget_note, plan_chunks, shard_plan
from lm_diff.console import err
from lm_diff.errors import UserError
from lm_diff.models import ModelSource, hidden_size, n_layers


class ActivationStream:
    """Activations of ``models`` on ``docs`` at ``layers``, computed shard by shard as training reads them."""

    def __init__(self, models: Sequence[Any], tokenizer: Any, docs: list[dict], layers: Sequence[int], cfg: Any,
                 model_names: Optional[Sequence[str]] = None, stats_shards: Optional[int] = None):
        if not models:
            raise UserError("stream: no models given")
        loaded = [m.load() if isinstance(m, ModelSource) else m for m in models]
        self._layers = sorted(set(int(x) for x in layers))
        raw = [unwrap(m) for m in loaded]
        self._d_model = hidden_size(raw[0])
        for i, m in enumerate(raw):
            if hidden_size(m) != self._d_model or n_layers(m) != n_layers(raw[0]):
                raise UserError(f"stream: model {i} does not match model 0 in hidden size or layer count")
            if self._layers[0] < 0 or self._layers[-1] >= n_layers(m):
                raise UserError(f"stream: layers {self._layers} out of range for a model with {n_layers(m)} layers")
        self.cfg = cfg
        self.names = list(model_names) if model_names else [
            m.name if isinstance(m, ModelSource) else model_label(m, i) for i, m in enumerate(models)]
        plan = plan_chunks(docs, tokenizer, cfg.context_length, cfg.max_tokens, cfg.heldout_fraction)
        if not plan["chunks"]:
            raise UserError("stream: the documents hold no tokens; check the corpus sources")
        note = budget_note(plan, cfg.max_tokens)
        if note:
            err().print(f"warning: {note}")
        self._chunks, self._prefix = plan["chunks"], plan["prefix"]
        self._doc_rows = {r["doc_id"]: r for r in plan["docs"]}
        self._plan = shard_plan(self._chunks, cfg.batch_size, cfg.shard_tokens)
        self._pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        backend = getattr(cfg, "backend", "nnsight")
        self._runners = [(make_runner(m, tokenizer, self._layers, backend), model_device(m)) for m in loaded]
        self._sums: dict[int, dict[str, torch.Tensor]] = {}
        self._stats: Optional[dict[str, Any]] = None
        self.stats_shards = stats_shards
        self.docs = plan["docs"]

    # -- shape, as ActivationStore ----------------------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        return list(self._layers)

    @property
    def n_models(self) -> int:
        return len(self._runners)

    @property
    def d_model(self) -> int:
        return self._d_model

    @property
    def n_tokens(self) -> int:
        return sum(r for _, _, r in self._plan)

    @property
    def models(self) -> list[str]:
        return list(self.names)

    @property
    def n_shards(self) -> int:
        return len(self._plan)

    def __len__(self) -> int:
        return self.n_tokens

    def _check_layer(self, layer: Optional[int]) -> int:
        return pick_layer(self._layers, layer, "activation stream", missing="is not computed")

    # -- shards ------------------------------------------------------------------------------------------------------
    def shard(self, si: int) -> dict[str, torch.Tensor]:
        """Shard ``si`` as a stored shard holds it: ``acts_<l>`` [N, M, D] in the storage dtype, fp64 sums, metadata."""
        c0, c1, _ = self._plan[si]
        acts: list[dict[int, list]] = [{layer: [] for layer in self._layers} for _ in self._runners]
        cols: dict[str, list] = {}
        with torch.no_grad():
            for ci in range(c0, c1, self.cfg.batch_size):
                batch = self._chunks[ci:min(ci + self.cfg.batch_size, c1)]
                ids, mask, keep = batch_tensors(batch, self._prefix, self._pad)
                for i, (run, dev) in enumerate(self._runners):
                    got = forward_batch(run, dev, ids, mask, keep, self._layers, self.names[i], batch,
                                        len(self._prefix))
                    for layer in self._layers:
                        acts[i][layer].append(got[layer])
                for k, v in batch_meta(batch, self._doc_rows).items():
                    cols.setdefault(k, []).extend(v)
        parts = [model_part({layer: torch.cat(v) for layer, v in a.items()}, self.cfg.dtype) for a in acts]
        tensors = shard_tensors(parts, self._layers)
        tensors.update({k: torch.cat(v) for k, v in cols.items()})
        self._sums.setdefault(si, shard_sums(tensors, self._layers))
        return tensors

    def iter_batches(self, batch_size: int, layer: Optional[int] = None, models: Sequence[int] = (0, 1),
                     split: str = "train", shuffle_buffer: int = 0, seed: int = 0, with_meta: bool = False,
                     drop_last: bool = False, rows: Optional[tuple[int, int]] = None) -> Iterator[Any]:
        """As ``ActivationStore.iter_batches``; each shard is computed when the batching reaches it."""
        layer = self._check_layer(layer)

        def read(si: int, keys: Sequence[str]) -> tuple[torch.Tensor, dict]:
            t = self.shard(si)
            return t[f"acts_{layer}"], {k: t[k] for k in keys if k in META_KEYS}

        return shard_batches(read, len(self._plan), self.n_models, batch_size, models=models, split=split,
                             shuffle_buffer=shuffle_buffer, seed=seed, with_meta=with_meta, drop_last=drop_last,
                             rows=rows)

    def stats(self, layer: Optional[int] = None) -> dict[str, Any]:
        """fp32 ``mean_MD``, ``mean_norm_M``, ``mean_sq_norm_M``, ``count``, merged exactly as a store's stats (over
        the first ``stats_shards`` shards when set)."""
        layer = self._check_layer(layer)
        if self._stats is None:
            n = len(self._plan) if self.stats_shards is None else max(1, min(self.stats_shards, len(self._plan)))
            for si in range(n):
                if si not in self._sums:
                    self.shard(si)
            self._stats = merge_sums([self._sums[si] for si in range(n)],
                                     sum(self._plan[si][2] for si in range(n)), self._layers)
        s = self._stats
        return {"mean_MD": s[f"mean_{layer}"].clone(), "mean_norm_M": s[f"mean_norm_{layer}"].clone(),
                "mean_sq_norm_M": s[f"mean_sq_norm_{layer}"].clone(), "count": int(s["count"])}
