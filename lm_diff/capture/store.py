"""On-disk sharded activation store (written by ``capture.activations``, read by training and analysis).

Layout of a store directory::

    meta.json                  written last: its presence marks a complete store (format lm_diff.activation_store/v1)
    progress.json              resume record while capturing (fingerprint, mode, model, next shard, committed shards)
    parts/                     while capturing model by model: each earlier model's share of each shard (removed
                               as the shard is written)
    shard_00000.safetensors    acts_<layer> [N, M, D] (float16 by default) + per-token metadata + fp64 partial sums
    stats.safetensors          fp32 running statistics per layer (merged exactly from the shards' fp64 sums)
    docs.jsonl                 one row per captured document: doc_id, source, category, chat, heldout, text, offsets
    doc_tokens.safetensors     ``tokens``: the content token ids of every captured document, concatenated (int32)
    tokenizer/                 the tokenizer, so later stages can decode example windows without the models

Per-token metadata in each shard: ``token_id`` (int32), ``doc_id`` (int32), ``position`` (int32, index of the token
among its document's content tokens, BOS excluded), ``source_id`` (int32, index into ``meta["sources"]``),
``template`` (bool, token belongs to a chat template rather than content), ``heldout`` (bool).

Held-out rule: a document is held out iff ``sha256(f"lm_diff-heldout:{doc_id}")`` read as a 64-bit fraction is below
``heldout_fraction`` (``heldout_doc``); whole documents are held out, so no held-out text leaks into training batches.

Streaming: ``iter_batches`` reads one shard's layer tensor at a time (safetensors, no pickle) and shuffles through a
bounded buffer that is refilled at 50 %, so peak memory is O(shuffle_buffer + shard size), not O(corpus).
``shard_batches`` is that batching over any shard reader: ``capture.stream.ActivationStream`` feeds it shards
computed on the fly, so training reads a stream and a store through the same code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lm_diff.errors import UserError
from lm_diff.io import save_safetensors

FORMAT = "lm_diff.activation_store/v1"
META_KEYS = ("token_id", "doc_id", "position", "source_id", "template", "heldout")
HELDOUT_RULE = 'sha256(f"lm_diff-heldout:{doc_id}").digest()[:8] as big-endian uint64 / 2**64 < heldout_fraction'


def heldout_doc(doc_id: int, fraction: float) -> bool:
    """Whether document ``doc_id`` is held out (see ``HELDOUT_RULE``)."""
    if fraction <= 0:
        return False
    h = hashlib.sha256(f"lm_diff-heldout:{doc_id}".encode()).digest()[:8]
    return int.from_bytes(h, "big") / 2**64 < fraction


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# bytes per stored token besides the activations: token_id, doc_id, position, source_id (int32) + template, heldout
META_BYTES_PER_TOKEN = 4 * 4 + 2


def model_part(acts: dict[int, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """One model's share of a shard: ``acts`` maps layer -> fp32 ``[N, D]``.

    Returns ``acts_<l>`` [N, D] in the storage dtype and the fp64 partial sums ``sum_<l>`` [D], ``normsum_<l>`` [],
    ``normsq_<l>`` [] computed from the fp32 values before the cast. Both capture modes build shards from these parts,
    so model-by-model and simultaneous capture write the same bytes.
    """
    out: dict[str, torch.Tensor] = {}
    for layer, a_ND in acts.items():
        a_ND = a_ND.float().contiguous()
        norms_N = a_ND.norm(dim=-1).double()
        out[f"acts_{layer}"] = a_ND.to(_DTYPES[dtype])
        out[f"sum_{layer}"] = a_ND.double().sum(0)
        out[f"normsum_{layer}"] = norms_N.sum()
        out[f"normsq_{layer}"] = (norms_N * norms_N).sum()
    return out


def shard_tensors(parts: Sequence[dict[str, torch.Tensor]], layers: Sequence[int]) -> dict[str, torch.Tensor]:
    """Stack per-model parts (``model_part``, in store order) into the shard tensors: ``acts_<l>`` [N, M, D],
    ``sum_<l>`` [M, D], ``normsum_<l>`` / ``normsq_<l>`` [M]."""
    out: dict[str, torch.Tensor] = {}
    for layer in layers:
        for key, dim in (("acts", 1), ("sum", 0), ("normsum", 0), ("normsq", 0)):
            out[f"{key}_{layer}"] = torch.stack([p[f"{key}_{layer}"] for p in parts], dim=dim)
    return out


def write_shard(path: Path, parts: Sequence[dict[str, torch.Tensor]], meta: dict[str, Any],
                layers: Sequence[int]) -> dict[str, Any]:
    """Write one shard atomically from per-model parts (``model_part``) and the per-token metadata columns.

    The fp64 partial sums are merged exactly (fp64 addition in shard order) by ``merge_stats``.
    """
    tensors = shard_tensors(parts, layers)
    n = int(tensors[f"acts_{layers[0]}"].shape[0])
    for key in META_KEYS:
        tensors[key] = meta[key]
    # one metadata key only: safetensors writes the metadata map in hash order, and resumed shards must be byte-identical
    save_safetensors(path, tensors, metadata={"format": FORMAT})
    return {"file": path.name, "rows": n}


def shard_sums(tensors: dict[str, torch.Tensor], layers: Sequence[int]) -> dict[str, torch.Tensor]:
    """The fp64 partial sums of one shard (``sum_<l>``, ``normsum_<l>``, ``normsq_<l>``)."""
    return {f"{key}_{layer}": tensors[f"{key}_{layer}"] for layer in layers for key in ("sum", "normsum", "normsq")}


def merge_sums(sums: Sequence[dict[str, torch.Tensor]], total: int, layers: Sequence[int]) -> dict[str, Any]:
    """fp32 ``mean_<l>`` / ``mean_norm_<l>`` / ``mean_sq_norm_<l>`` from per-shard fp64 sums added in shard order."""
    acc: dict[str, torch.Tensor] = {}
    for s in sums:
        for name, t in s.items():
            acc[name] = t if name not in acc else acc[name] + t
    out: dict[str, Any] = {"count": total}
    for layer in layers:
        out[f"mean_{layer}"] = (acc[f"sum_{layer}"] / max(total, 1)).float()
        out[f"mean_norm_{layer}"] = (acc[f"normsum_{layer}"] / max(total, 1)).float()
        out[f"mean_sq_norm_{layer}"] = (acc[f"normsq_{layer}"] / max(total, 1)).float()
    return out


def merge_stats(store_dir: Path, shards: Sequence[dict], layers: Sequence[int]) -> dict[str, Any]:
    """fp32 mean_MD / mean_norm_M / mean_sq_norm_M per layer from the shards' fp64 partial sums (exact, order-fixed)."""
    sums = []
    for s in shards:
        with safe_open(str(store_dir / s["file"]), framework="pt") as fh:
            sums.append({f"{key}_{layer}": fh.get_tensor(f"{key}_{layer}")
                         for layer in layers for key in ("sum", "normsum", "normsq")})
    return merge_sums(sums, sum(s["rows"] for s in shards), layers)


def shard_batches(read: Callable[[int, Sequence[str]], tuple[torch.Tensor, dict]], n_shards: int, n_models: int,
                  batch_size: int, models: Sequence[int] = (0, 1), split: str = "train", shuffle_buffer: int = 0,
                  seed: int = 0, with_meta: bool = False, drop_last: bool = False,
                  rows: tuple[int, int] | None = None) -> Iterator[Any]:
    """The batching behind ``ActivationStore.iter_batches`` over any source of shards (the disk store, or a stream
    that computes shards on the fly): ``read(shard_index, meta_keys) -> (acts_NMD, meta)``. Same arguments and
    results as ``iter_batches``; the same shards give the same batches, bit for bit. ``rows=(lo, hi)`` (with
    ``drop_last``) yields only rows lo:hi of each batch, gathered from the buffer alone (a data-parallel rank's
    slice: the others are never permuted, converted to fp32 or copied)."""
    if split not in ("train", "heldout", "all"):
        raise UserError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    idx = list(models)
    bad = [m for m in idx if not 0 <= m < n_models]
    if bad or not idx:
        raise UserError(f"models {tuple(models)} out of range: the store holds {n_models} models (0..{n_models - 1})")
    if batch_size <= 0 or (rows and not (drop_last and 0 <= rows[0] < rows[1] <= batch_size)):
        raise UserError(f"batch_size must be > 0 (got {batch_size}), and rows {rows} a slice of it with drop_last")
    return _batches(read, n_shards, n_models, batch_size, idx, split, shuffle_buffer, seed, with_meta, drop_last,
                    rows or (0, batch_size))


def _batches(read, n_shards, n_models, batch_size, idx, split, shuffle_buffer, seed, with_meta, drop_last, rows):
    gen = torch.Generator().manual_seed(int(seed))
    order = list(range(n_shards))
    if shuffle_buffer > 0:
        order = [order[i] for i in torch.randperm(len(order), generator=gen).tolist()]
    keys = META_KEYS if (with_meta or split != "all") else ()
    sel = torch.tensor(idx)
    buf_a: list[Any] = []
    buf_m: list[dict] = []
    count = 0

    def cat():
        a = torch.cat(buf_a) if len(buf_a) > 1 else buf_a[0]
        m = {k: torch.cat([b[k] for b in buf_m]) for k in buf_m[0]} if buf_m and buf_m[0] else {}
        return a, m

    def emit(a, m, n, perm=None):  # batch rows a[perm][s + lo:s + hi], gathered without permuting the rest
        for s in range(0, n - batch_size + 1, batch_size):
            i = slice(s + rows[0], s + rows[1]) if perm is None else perm[s + rows[0]:s + rows[1]]
            out = a[i].float()
            yield (out, {k: v[i] for k, v in m.items()}) if with_meta else out

    for si in order:
        a, m = read(si, keys)
        a = a.index_select(1, sel) if idx != list(range(n_models)) else a
        if split != "all":
            keep = m["heldout"] if split == "heldout" else ~m["heldout"]
            if not bool(keep.all()):
                a = a[keep]
                m = {k: v[keep] for k, v in m.items()}
        if not with_meta:
            m = {}
        if a.shape[0] == 0:
            continue
        buf_a.append(a)
        buf_m.append(m)
        count += a.shape[0]
        if shuffle_buffer > 0:
            if count < shuffle_buffer:
                continue
            a, m = cat()
            perm = torch.randperm(count, generator=gen)
            keep_n = shuffle_buffer // 2
            n_out = ((count - keep_n) // batch_size) * batch_size
        else:
            a, m = cat()
            perm, n_out = None, (count // batch_size) * batch_size
        yield from emit(a, m, n_out, perm)
        rest = slice(n_out, None) if perm is None else perm[n_out:]
        buf_a, buf_m = [a[rest]], [{k: v[rest] for k, v in m.items()}]
        count -= n_out
    if count:
        a, m = cat()
        perm = torch.randperm(count, generator=gen) if shuffle_buffer > 0 else None
        n_full = (count // batch_size) * batch_size
        yield from emit(a, m, n_full, perm)
        if n_full < count and not drop_last:
            i = slice(n_full, None) if perm is None else perm[n_full:]
            out = a[i].float()
            yield (out, {k: v[i] for k, v in m.items()}) if with_meta else out


def pick_layer(layers: list[int], layer: int | None, where: str, missing: str = "was not captured") -> int:
    """``layer``, or the only layer when None; one UserError naming ``where`` otherwise (store and stream alike)."""
    if layer is None:
        if len(layers) != 1:
            raise UserError(f"{where}: holds layers {layers}; name one")
        return layers[0]
    if layer not in layers:
        raise UserError(f"{where}: layer {layer} {missing}; it holds layers {layers}")
    return layer


class ActivationStore:
    """Read-only view of a complete activation store directory (see the module docstring for the layout)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.exists():
            hint = " (capture was interrupted; rerun it to resume)" if (self.path / "progress.json").exists() else ""
            raise UserError(f"{self.path}: not a complete activation store, meta.json is missing{hint}")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        if self.meta.get("format") != FORMAT:
            raise UserError(f"{self.path}: unknown store format {self.meta.get('format')!r}; expected {FORMAT}")
        self._stats = None
        self._docs = None
        self._tokens = None
        self._tokenizer = None

    # -- shape ---------------------------------------------------------------------------------------------------
    @property
    def n_tokens(self) -> int:
        return int(self.meta["n_tokens"])

    @property
    def d_model(self) -> int:
        return int(self.meta["d_model"])

    @property
    def n_models(self) -> int:
        return int(self.meta["n_models"])

    @property
    def layers(self) -> list[int]:
        return list(self.meta["layers"])

    @property
    def sources(self) -> list[str]:
        """Source labels; ``source_id`` indexes this list."""
        return [s["name"] for s in self.meta["sources"]]

    @property
    def models(self) -> list[str]:
        return list(self.meta["models"])

    @property
    def shards(self) -> list[dict]:
        return list(self.meta["shards"])

    def __len__(self) -> int:
        return self.n_tokens

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.path)!r}, n_tokens={self.n_tokens}, models={self.n_models}, layers={self.layers}, d_model={self.d_model})"

    def _check_layer(self, layer: int | None) -> int:
        return pick_layer(self.layers, layer, str(self.path))

    # -- statistics ----------------------------------------------------------------------------------------------
    def stats(self, layer: int | None = None) -> dict[str, Any]:
        """fp32 running statistics over all tokens: ``mean_MD``, ``mean_norm_M``, ``mean_sq_norm_M``, ``count``."""
        layer = self._check_layer(layer)
        if self._stats is None:
            self._stats = load_file(str(self.path / "stats.safetensors"))
        s = self._stats
        return {
            "mean_MD": s[f"mean_{layer}"].clone(),
            "mean_norm_M": s[f"mean_norm_{layer}"].clone(),
            "mean_sq_norm_M": s[f"mean_sq_norm_{layer}"].clone(),
            "count": int(s["count"].item()),
        }

    # -- reading -------------------------------------------------------------------------------------------------
    def _read_shard(self, file: str, layer: int | None, meta_keys: Sequence[str]) -> tuple[Any, dict]:
        with safe_open(str(self.path / file), framework="pt") as fh:
            acts = fh.get_tensor(f"acts_{layer}") if layer is not None else None
            meta = {k: fh.get_tensor(k) for k in meta_keys}
        return acts, meta

    def iter_batches(self, batch_size: int, layer: int | None = None, models: Sequence[int] = (0, 1),
                     split: str = "train", shuffle_buffer: int = 0, seed: int = 0, with_meta: bool = False,
                     drop_last: bool = False, rows: tuple[int, int] | None = None) -> Iterator[Any]:
        """Yield float32 ``acts_BMD`` batches (or ``(acts_BMD, meta)`` with ``with_meta``) of one layer; with
        ``rows=(lo, hi)`` only those rows of each (data-parallel training: a rank's slice, see ``shard_batches``).

        ``models`` selects (and may repeat) model indices: ``(0, 0)`` is the identity control. ``split`` is ``train``,
        ``heldout`` or ``all``. ``shuffle_buffer`` > 0 shuffles the shard order and streams rows through a buffer of
        that many tokens, refilled when it falls to half; 0 reads in store order. Deterministic given ``seed``. The
        last batch may be short unless ``drop_last``. ``meta`` maps each of token_id, doc_id, position, source_id,
        template, heldout to a [B] tensor.
        """
        layer = self._check_layer(layer)

        def read(si: int, keys: Sequence[str]) -> tuple[torch.Tensor, dict]:
            return self._read_shard(self.shards[si]["file"], layer, keys)

        return shard_batches(read, len(self.shards), self.n_models, batch_size, models=models, split=split,
                             shuffle_buffer=shuffle_buffer, seed=seed, with_meta=with_meta, drop_last=drop_last,
                             rows=rows)

    def read_all(self, layer: int | None = None, models: Sequence[int] | None = None, split: str = "all") -> Any:
        """All activations of one layer as float32 [N, M, D] in store order (small stores and tests only)."""
        models = tuple(range(self.n_models)) if models is None else tuple(models)
        parts = list(self.iter_batches(1 << 30, layer, models=models, split=split))
        return torch.cat(parts) if parts else torch.zeros(0, len(models), self.d_model)

    def token_table(self):
        """pandas DataFrame, one row per stored token in store order: token_id, doc_id, position, source_id, source,
        category, template, heldout."""
        cols: dict[str, list] = {k: [] for k in META_KEYS}
        for s in self.shards:
            _, m = self._read_shard(s["file"], None, META_KEYS)
            for k in META_KEYS:
                cols[k].append(m[k])
        data = {k: (torch.cat(v).numpy() if v else []) for k, v in cols.items()}
        df = pd.DataFrame(data)
        df["source"] = pd.Categorical.from_codes(df["source_id"].to_numpy(), categories=self.sources) if len(df) else []
        cat = {d["doc_id"]: d.get("category") for d in self.docs()}
        df["category"] = df["doc_id"].map(cat)
        return df

    # -- documents -----------------------------------------------------------------------------------------------
    def docs(self) -> list[dict]:
        """Rows of docs.jsonl: doc_id, source, source_id, category, chat, heldout, text, n_tokens, offset."""
        if self._docs is None:
            with open(self.path / "docs.jsonl", encoding="utf-8") as fh:
                self._docs = [json.loads(line) for line in fh if line.strip()]
            self._doc_index = {d["doc_id"]: i for i, d in enumerate(self._docs)}
        return self._docs

    def doc(self, doc_id: int) -> dict:
        self.docs()
        if doc_id not in self._doc_index:
            raise UserError(f"{self.path}: document {doc_id} was not captured")
        return self._docs[self._doc_index[doc_id]]

    def doc_token_ids(self, doc_id: int) -> list[int]:
        """Content token ids of a captured document (BOS excluded; ``position`` indexes this list)."""
        d = self.doc(doc_id)
        if self._tokens is None:
            self._tokens = load_file(str(self.path / "doc_tokens.safetensors"))["tokens"]
        return self._tokens[d["offset"]:d["offset"] + d["n_tokens"]].tolist()

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer  # noqa: PLC0415 - heavy (seconds); only decoding windows needs it

            self._tokenizer = AutoTokenizer.from_pretrained(str(self.path / "tokenizer"))
        return self._tokenizer

    def decode_window(self, doc_id: int, position: int, radius: int = 16) -> dict[str, Any]:
        """The text around token ``position`` of ``doc_id``: ``{"before", "token", "after", "token_ids", "tokens",
        "center"}`` (``tokens`` are decoded one by one; ``center`` indexes the target in ``tokens``)."""
        ids = self.doc_token_ids(doc_id)
        if not 0 <= position < len(ids):
            raise UserError(f"position {position} is outside document {doc_id} ({len(ids)} tokens)")
        lo, hi = max(0, position - radius), min(len(ids), position + radius + 1)
        tok = self.tokenizer
        window = ids[lo:hi]
        return {
            "before": tok.decode(ids[lo:position]),
            "token": tok.decode([ids[position]]),
            "after": tok.decode(ids[position + 1:hi]),
            "token_ids": window,
            "tokens": [tok.decode([t]) for t in window],
            "center": position - lo,
        }
