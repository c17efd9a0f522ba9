"""Paired activation capture: identical token ids through every model, residual stream after chosen decoder layers.

``capture(models, tokenizer, docs, layers, out_dir, cfg) -> Path`` writes an activation store (``lm_diff.capture.store``).
``models`` are loaded models or ``lm_diff.models.ModelSource``s (a name, a loader and an identity), in store order.

What it does, in order:

1. **Tokenise once** with the shared tokenizer (``lm_diff.capture.tokenize``) and plan the batches and shards from the
   chunk index alone (``shard_plan``), so every model sees the same ``input_ids`` tensors.
2. **Check the disk** (``lm_diff.capture.disk``): the store's estimated size against the free space, before anything
   is written.
3. **Forward** (``lm_diff.capture.forward``), under ``torch.no_grad()``, keeping the output of each requested decoder
   layer ℓ (= HF ``hidden_states[ℓ+1]``; for the last layer HF applies the final norm to ``hidden_states[L]`` in most
   architectures, we store the raw layer output). The forward stops right after the last needed layer. BOS/prefix
   positions and padding are dropped; the first non-finite activation stops the capture.

   - **Model by model** (default): one pass per model over all shards, so one model is resident at a time (sources are
     loaded at the start of their pass and released after it). Earlier models' shares of each shard go to
     ``parts/``; the last model's pass joins them into the shards and deletes the parts.
   - **Simultaneous** (``capture.simultaneous: true``): one pass, every batch through every model.

   Both modes build each shard from the same per-model parts (``store.model_part``), so they write the same bytes.
4. **Commit** each shard (or part) atomically; ``progress.json`` records the pass and next shard, so a killed capture
   resumes where it stopped and produces bit-identical shards.
"""

from __future__ import annotations

import copy
import gc
import json
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from safetensors.torch import load_file

from lm_diff.capture.disk import SIDE_BYTES, check_free_disk, store_bytes
from lm_diff.capture.forward import (
    batch_meta,
    batch_tensors,
    forward_batch,
    make_runner,
    model_device,
    model_identity,
    model_label,
    unwrap,
)
from lm_diff.capture.store import FORMAT, HELDOUT_RULE, merge_stats, model_part, shard_name, write_shard
from lm_diff.capture.tokenize import (
    budget_note,
    chunk_hashes,
    encode_doc,
    plan_chunks,
    shard_plan,
    tokenizer_prefix,
)
from lm_diff.console import err
from lm_diff.console import progress as progress_bar
from lm_diff.errors import UserError
from lm_diff.io import atomic_dir, hash_obj, read_json, save_safetensors, write_json, write_text
from lm_diff.models import ModelSource, hidden_size, n_layers

PARTS = "parts"
# tokenisation helpers stay importable from here (diff.quality and the benchmarks use them)
__all__ = ["capture", "encode_doc", "plan_chunks", "tokenizer_prefix", "ModelSource"]


def _part_path(out: Path, shard: int, model: int) -> Path:
    return out / PARTS / f"shard_{shard:05d}.m{model}.safetensors"


class _Models:
    """Loads the models of a pass (sources on demand) and checks each against the first one's shape."""

    def __init__(self, models: Sequence[Any], layers: list[int]):
        self.items = list(models)
        self.layers = layers
        self.d_model: Optional[int] = None
        self.n_layers: Optional[int] = None

    def get(self, i: int) -> Any:
        item = self.items[i]
        model = item.load() if isinstance(item, ModelSource) else item
        raw = unwrap(model)
        d, n = hidden_size(raw), n_layers(raw)
        if self.d_model is None:
            self.d_model, self.n_layers = d, n
        if (d, n) != (self.d_model, self.n_layers):
            raise UserError(f"capture: model {i} does not match model 0 in hidden size or layer count "
                            f"({d}, {n} vs {self.d_model}, {self.n_layers}); run models.check_pair first")
        if self.layers[0] < 0 or self.layers[-1] >= n:
            raise UserError(f"capture: layers {self.layers} out of range for a model with {n} decoder layers")
        return model

    def release(self, loaded: list) -> None:
        """Drop models this capture loaded itself (sources), so the next pass has the memory."""
        if any(isinstance(self.items[i], ModelSource) for i, _ in loaded):
            loaded.clear()
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def capture(models: list, tokenizer: Any, docs: list[dict], layers: list[int], out_dir: str | Path, cfg: Any,
            progress: bool = True, *, model_names: Optional[Sequence[str]] = None,
            callback: Optional[Callable[[dict], None]] = None) -> Path:
    """Capture paired activations of ``models`` on ``docs`` at decoder ``layers`` into the store ``out_dir``.

    ``models``: HF causal LMs (or nnsight ``TransformersModel``s) that passed ``models.check_pair``, or
    ``ModelSource``s loaded one at a time; the store keeps their order (index 0 = A, 1 = B, or P, A, B for the anchored
    design). ``docs``: ``{"text", "source", "category", "chat"}`` (chat rows may carry ``messages``). ``cfg``: a
    ``CaptureConfig``. Resumable: rerunning with the same inputs continues after the last committed shard; a complete
    store is returned as is. ``callback`` (tests, progress hooks) gets ``{"event": "batch"|"part"|"shard",
    "next_chunk", "rows", "models"}`` after each batch and after each part / shard commit.
    """
    out = Path(out_dir)
    if not models:
        raise UserError("capture: no models given")
    layers = sorted(set(int(x) for x in layers))
    M = len(models)
    backend = getattr(cfg, "backend", "nnsight")
    simultaneous = bool(getattr(cfg, "simultaneous", False))
    if model_names:
        names = list(model_names)
    else:
        names = [m.name if isinstance(m, ModelSource) else model_label(m, i) for i, m in enumerate(models)]
    identities = [m.identity if isinstance(m, ModelSource) else model_identity(m) for m in models]

    plan = plan_chunks(docs, tokenizer, cfg.context_length, cfg.max_tokens, cfg.heldout_fraction)
    chunks, prefix = plan["chunks"], plan["prefix"]
    if not chunks:
        raise UserError("capture: the documents hold no tokens; check the corpus sources")
    note = budget_note(plan, cfg.max_tokens)
    if note and not getattr(cfg, "streaming", False):  # streaming: the disk part is cut on purpose; the stream says it
        err().print(f"warning: {note}")
    tok_hash, tmpl_hash = chunk_hashes(chunks)
    fingerprint = hash_obj({
        "format": FORMAT, "models": identities, "layers": layers, "tokens": tok_hash,
        "prefix": prefix, "batch_size": cfg.batch_size, "shard_tokens": cfg.shard_tokens, "dtype": cfg.dtype,
        "heldout_fraction": cfg.heldout_fraction, "context_length": cfg.context_length, "templates": tmpl_hash,
    })
    mode = "simultaneous" if simultaneous else "sequential"

    meta_path, prog_path = out / "meta.json", out / "progress.json"
    if meta_path.exists():
        meta = read_json(meta_path)
        if meta.get("fingerprint") == fingerprint:
            if progress:
                err().print(f"activation store already complete: {out} ({meta['n_tokens']} tokens)")
            return out
        raise UserError(f"{out} already holds a complete activation store captured with other models, documents or "
                        f"settings; delete it or choose another output directory")
    state = None
    if prog_path.exists():
        state = read_json(prog_path)
        if state.get("fingerprint") != fingerprint or state.get("mode") != mode:
            err().print(f"warning: {out} holds a partial capture with other settings; starting over")
            for f in [*out.glob("shard_*.safetensors"), *out.glob(f"{PARTS}/*.safetensors")]:
                f.unlink()
            prog_path.unlink()
            state = None

    splan = shard_plan(chunks, cfg.batch_size, cfg.shard_tokens)
    passes = [list(range(M))] if simultaneous else [[m] for m in range(M)]
    total_rows = sum(r for _, _, r in splan)
    pool = _Models(models, layers)
    doc_rows = {r["doc_id"]: r for r in plan["docs"]}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    def start(d_model: int) -> dict:
        """Disk check and the deterministic side files, once the width is known; nothing is written before this."""
        if state is not None:
            done = sum(s["rows"] for s in state["shards"])
            check_free_disk(out, store_bytes(total_rows - done, M, len(layers), d_model, cfg.dtype))
            return state
        biggest = max(r for _, _, r in splan)
        need = store_bytes(total_rows, M, len(layers), d_model, cfg.dtype) + SIDE_BYTES
        if not simultaneous:
            need += store_bytes(biggest, M - 1, len(layers), d_model, cfg.dtype)
        check_free_disk(out, need)
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "docs.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in plan["docs"]))
        save_safetensors(out / "doc_tokens.safetensors", {"tokens": torch.from_numpy(plan["tokens"])})
        with atomic_dir(out / "tokenizer") as tdir:
            copy.deepcopy(tokenizer).save_pretrained(str(tdir))
        new = {"fingerprint": fingerprint, "mode": mode, "d_model": d_model, "pass": 0, "next_shard": 0, "shards": []}
        write_json(prog_path, new)
        return new

    done_rows = 0 if state is None else (state["pass"] * total_rows + sum(s["rows"] for s in state["shards"])
                                         if not simultaneous else sum(s["rows"] for s in state["shards"]))
    with progress_bar("capture", total=total_rows * len(passes), enabled=progress, start=done_rows) as bar, \
            torch.no_grad():
        first_pass = 0 if state is None else state["pass"]
        for p in range(first_pass, len(passes)):
            loaded = [(i, pool.get(i)) for i in passes[p]]
            state = start(pool.d_model)
            final = p == len(passes) - 1
            runners = [(i, make_runner(m, tokenizer, layers, backend), model_device(m)) for i, m in loaded]
            for si in range(state["next_shard"], len(splan)):
                c0, c1, _ = splan[si]
                acts: dict[int, dict[int, list]] = {i: {layer: [] for layer in layers} for i, _ in loaded}
                cols: dict[str, list] = {}
                rows = 0
                for ci in range(c0, c1, cfg.batch_size):
                    batch = chunks[ci:min(ci + cfg.batch_size, c1)]
                    ids, mask, keep = batch_tensors(batch, prefix, pad_id)
                    for i, run, dev in runners:
                        got = forward_batch(run, dev, ids, mask, keep, layers, names[i], batch, len(prefix))
                        for layer in layers:
                            acts[i][layer].append(got[layer])
                    if final:
                        for k, v in batch_meta(batch, doc_rows).items():
                            cols.setdefault(k, []).extend(v)
                    n = int(keep.sum())
                    rows += n
                    bar.advance(n)
                    if callback is not None:
                        callback({"event": "batch", "next_chunk": ci + len(batch), "rows": rows, "models": passes[p]})
                parts = {i: model_part({layer: torch.cat(v) for layer, v in acts[i].items()}, cfg.dtype)
                         for i in acts}
                if final:
                    for i in range(M):
                        if i not in parts:
                            parts[i] = load_file(str(_part_path(out, si, i)))
                    info = write_shard(out / shard_name(si), [parts[i] for i in range(M)],
                                       {k: torch.cat(v) for k, v in cols.items()}, layers)
                    state["shards"].append(info)
                else:
                    for i, part in parts.items():
                        save_safetensors(_part_path(out, si, i), part)
                state["next_shard"] = si + 1
                write_json(prog_path, state)  # commit point
                if final:
                    for i in range(M):
                        _part_path(out, si, i).unlink(missing_ok=True)
                if callback is not None:
                    callback({"event": "shard" if final else "part", "next_chunk": c1, "rows": rows,
                              "models": passes[p]})
            if not final:
                state["pass"], state["next_shard"] = p + 1, 0
                write_json(prog_path, state)
            runners = run = dev = got = None  # nothing may keep this pass's models alive
            pool.release(loaded)

    _finish(out, state, plan, layers, names, backend, cfg, len(chunks))
    if (out / PARTS).is_dir() and not any((out / PARTS).iterdir()):
        (out / PARTS).rmdir()
    if progress:
        err().print(f"captured {sum(s['rows'] for s in state['shards'])} tokens x {M} models at layers {layers} "
                    f"(d={state['d_model']}, {cfg.dtype}) -> {out}")
    return out


def _finish(out: Path, state: dict, plan: dict, layers: list[int], names: list[str], backend: str, cfg: Any,
            n_chunks: int) -> None:
    """Statistics and meta.json (its presence marks completion)."""
    stats = merge_stats(out, state["shards"], layers)
    count = stats.pop("count")
    save_safetensors(out / "stats.safetensors", {**stats, "count": torch.tensor(count, dtype=torch.int64)})
    src_tokens: dict[int, int] = {}
    src_docs: dict[int, int] = {}
    for r in plan["docs"]:
        src_tokens[r["source_id"]] = src_tokens.get(r["source_id"], 0) + r["n_tokens"]
        src_docs[r["source_id"]] = src_docs.get(r["source_id"], 0) + 1
    heldout_tokens = sum(r["n_tokens"] for r in plan["docs"] if r["heldout"])
    meta = {
        "format": FORMAT,
        "fingerprint": state["fingerprint"],
        "models": names,
        "n_models": len(names),
        "layers": layers,
        "d_model": state["d_model"],
        "dtype": cfg.dtype,
        "context_length": cfg.context_length,
        "prefix_ids": plan["prefix"],
        "backend": backend,
        "n_tokens": count,
        "n_docs": len(plan["docs"]),
        "n_chunks": n_chunks,
        "token_counts": {"all": count, "train": count - heldout_tokens, "heldout": heldout_tokens,
                         "template": sum(r["n_template"] for r in plan["docs"])},
        "sources": [{**s, "n_tokens": src_tokens.get(s["id"], 0), "n_docs": src_docs.get(s["id"], 0)}
                    for s in plan["sources"]],
        "shards": state["shards"],
        "heldout": {"fraction": cfg.heldout_fraction, "unit": "document", "rule": HELDOUT_RULE},
        "position": "index among the document's content tokens (BOS/prefix excluded); chunks of context_length include the prefix",
        "activation": "output of decoder layer l (HF hidden_states[l+1]), BOS and padding dropped",
    }
    write_json(out / "meta.json", meta)
