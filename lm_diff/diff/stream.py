"""Streaming helpers shared by the diff stage (table, scaling, examples) and categorize: encode/decode store batches
on the crosscoder's device, iterate a store with a token cap, the store's sources, document categories and sizes."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from lm_diff.console import progress as console_progress
from lm_diff.diff import device as xdev


def encode_batch(cc: Any, acts_BMD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw store activations -> (x_BMD in the crosscoder's working space, f_BL), both on the crosscoder's device
    (the activations are moved there first). No gradients.

    The working space is the normalised training space (``cc.normalise``); for a crosscoder whose normalisation was
    folded into the weights it is the raw space. ``decode_batch`` returns reconstructions in the same space."""
    with torch.no_grad():
        x = acts_BMD.to(xdev.crosscoder_device(cc)).float()
        if hasattr(cc, "normalise"):
            x = cc.normalise(x)
        try:
            f = cc.encode(x, normalised=True)
        except TypeError:  # stand-ins whose encode takes working-space inputs only
            f = cc.encode(x)
    return x, f


def decode_batch(cc: Any, f_BL: torch.Tensor) -> torch.Tensor:
    """Reconstruction x̂_BMD in the working space of :func:`encode_batch`."""
    with torch.no_grad():
        try:
            return cc.decode(f_BL, denormalise=False)
        except TypeError:
            return cc.decode(f_BL)


def iter_store(
    store: Any,
    layer: Any,
    models: Sequence[int],
    batch_size: int,
    split: str = "all",
    max_tokens: Optional[int] = None,
    with_meta: bool = True,
    shuffle_buffer: int = 0,
    seed: int = 0,
) -> Iterator[tuple[torch.Tensor, dict]]:
    """Yield ``(acts_BMD, meta)`` from ``store.iter_batches`` (meta = {} when ``with_meta`` is False), stopping after
    ``max_tokens`` tokens (the last batch is cut)."""
    seen = 0
    it = store.iter_batches(
        batch_size, layer, models=tuple(models), split=split, shuffle_buffer=shuffle_buffer, seed=seed, with_meta=with_meta
    )
    for item in it:
        if with_meta:
            acts, meta = item
        else:
            acts, meta = (item[0] if isinstance(item, tuple) else item), {}
        acts = torch.as_tensor(acts)
        if max_tokens is not None and seen + acts.shape[0] > max_tokens:
            keep = max_tokens - seen
            acts = acts[:keep]
            meta = {k: v[:keep] for k, v in meta.items()}
        seen += acts.shape[0]
        if acts.shape[0]:
            yield acts, meta
        if max_tokens is not None and seen >= max_tokens:
            return


def store_tokens(store: Any, split: str = "all") -> Optional[int]:
    """Number of tokens in ``store`` for a split when the store says (``n_tokens`` / ``split_tokens``), else None."""
    fn = getattr(store, "split_tokens", None)
    if callable(fn):
        try:
            return int(fn(split))
        except Exception:  # noqa: BLE001 - optional nicety for progress totals only
            pass
    n = getattr(store, "n_tokens", None)
    return int(n) if isinstance(n, (int, np.integer)) and split == "all" else None


def source_info(store: Any) -> tuple[list[str], list[Optional[str]]]:
    """Source labels of ``store`` (indexed by the per-token ``source_id``) and each source's benchmark category.

    ``store.sources`` may list strings, or mappings with ``label``/``name`` and an optional ``category``; a store may
    also expose ``source_categories`` (label -> category)."""
    labels: list[str] = []
    cats: list[Optional[str]] = []
    extra = getattr(store, "source_categories", None) or {}
    for i, s in enumerate(getattr(store, "sources", None) or []):
        if isinstance(s, dict):
            label = str(s.get("label") or s.get("name") or s.get("source") or i)
            cat = s.get("category")
        else:
            label, cat = str(s), None
        labels.append(label)
        cats.append(cat if cat is not None else extra.get(label))
    return labels, cats


def doc_categories(store: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(sorted doc ids, category code per doc id, category names) from ``store.docs()`` rows with a ``category``
    (benchmark prompts); empty when the store has no categorised documents."""
    docs = store.docs() if callable(getattr(store, "docs", None)) else []
    pairs = [(int(d["doc_id"]), d.get("category")) for d in docs if d.get("category")]
    cats = sorted({c for _, c in pairs})
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), []
    index = {c: i for i, c in enumerate(cats)}
    pairs.sort()
    return np.array([p[0] for p in pairs], np.int64), np.array([index[p[1]] for p in pairs], np.int64), cats


def _meta_tensor(meta: dict, key: str, n: int, dtype=torch.long, device: Any = "cpu") -> Optional[torch.Tensor]:
    v = meta.get(key)
    if v is None:
        return None
    t = torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v)
    return t.to(device, dtype).reshape(n)


def progress_bar(enabled: bool, description: str, total: Optional[float] = None):
    """A progress context (``lm_diff.console.progress``): ``with progress_bar(...) as advance: advance(n)``; a no-op
    when disabled."""

    @contextlib.contextmanager
    def _cm():
        with console_progress(description, total=total, enabled=enabled) as p:
            yield lambda n=1: p.advance(n)

    return _cm()
