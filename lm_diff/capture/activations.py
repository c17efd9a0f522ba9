"""Paired activation capture: identical token ids through every model, residual stream after chosen decoder layers.

``capture(models, tokenizer, docs, layers, out_dir, cfg) -> Path`` writes an activation store (``lm_diff.capture.store``).

What it does, in order:

1. **Tokenise once** with the shared tokenizer (``check_pair`` must have passed). Plain documents are encoded without
   special tokens; chat documents (``chat: True``; ``messages`` = [{role, content}] or ``text`` as one user turn) are
   rendered with the tokenizer's chat template and get a per-token **template mask** (True where the token's
   characters lie outside every message's content, from the fast tokenizer's offsets). The tokenizer's own prefix
   (the ids ``tokenizer("x")`` puts before the text, normally BOS; empty for GPT-2-style tokenizers) is prepended to
   every chunk, long documents are split into chunks of ``context_length`` tokens (prefix included), and the budget
   ``max_tokens`` counts content tokens only.
2. **Forward** each batch of chunks (right-padded, with an attention mask only when a row is padded) through every
   model with the **same** ``input_ids`` tensor, under ``torch.no_grad()``, and keep the output of each requested
   decoder layer ℓ (= HF ``hidden_states[ℓ+1]``; for the last layer HF applies the final norm to ``hidden_states[L]``
   in most architectures, we store the raw layer output). The forward stops right after the last needed layer.
3. **Drop** the prefix (BOS) positions and padding, and append rows to the current shard; shards are committed
   atomically and ``progress.json`` records the next chunk, so a killed capture resumes where it stopped and produces
   bit-identical shards (batches are formed deterministically from the chunk index; shards hold whole batches).

Backends (``CaptureConfig.backend``):

- ``nnsight`` (default, the supported interface): each model is wrapped once in ``nnsight.TransformersModel`` (with a
  *copy* of the tokenizer: nnsight sets ``padding_side="left"`` on the tokenizer it is given, which would silently change
  a tokenizer shared with lm-eval), traced on the pre-tokenised ids, saves ``layers[ℓ].output`` and calls
  ``tracer.stop()`` after the last layer. It also accepts models that are already ``TransformersModel`` envoys.
  ``benchmarks/bench_capture.py`` (Gemma2 6 layers d=512, layer 3, 8192 tokens, 2 shared vCPUs under heavy
  contention) gave capture/2-HF-forward throughput ratios of 1.96 and 1.44 for nnsight and 1.59 and 2.04 for hooks in
  two runs: the backends are within the machine's noise of each other (environment.md: nnsight on pre-tokenised ids
  costs ~1.0-1.2x a plain forward, a fixed ~1-6 ms per trace), so the supported nnsight path stays the default.
- ``hooks``: plain torch forward hooks on the decoder layers; the last one raises a private exception to stop the
  forward. No dependency on nnsight internals; use it when an architecture trips nnsight's tracing.

Both backends produce identical activations (tested).
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from lm_diff.capture.store import FORMAT, HELDOUT_RULE, heldout_doc, merge_stats, shard_name, write_shard
from lm_diff.errors import UserError


class _Stop(Exception):
    """Raised by the last forward hook to skip the rest of the forward."""


# ----------------------------------------------------------------------------------------------------------------------
# Tokenisation


def tokenizer_prefix(tokenizer: Any) -> list[int]:
    """Ids the tokenizer puts before the text by itself (usually ``[bos]``; ``[]`` for GPT-2-style tokenizers)."""
    with_special = list(tokenizer("a b", add_special_tokens=True)["input_ids"])
    plain = list(tokenizer("a b", add_special_tokens=False)["input_ids"])
    for i in range(len(with_special)):
        if with_special[i:i + len(plain)] == plain:
            return with_special[:i]
    return []


def _chat_messages(doc: dict) -> list[dict]:
    msgs = doc.get("messages")
    if msgs:
        return [{"role": m["role"], "content": m["content"]} for m in msgs]
    return [{"role": "user", "content": doc["text"]}]


def encode_doc(doc: dict, tokenizer: Any, prefix: Sequence[int]) -> tuple[list[int], list[bool], str]:
    """Content token ids, template mask and the rendered text of one document (prefix/BOS not included)."""
    if not doc.get("chat"):
        text = doc["text"]
        # whole documents are chunked to the context length later: no "longer than the maximum" warning
        ids = list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        return ids, [False] * len(ids), text
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"document from source {doc.get('source')!r} is marked chat but the tokenizer has no chat template; "
            "set chat: false for that corpus source or use a tokenizer with a chat template"
        )
    messages = _chat_messages(doc)
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    enc = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    spans = []
    cursor = 0
    for m in messages:
        content = m["content"] if isinstance(m["content"], str) else ""
        at = rendered.find(content, cursor) if content else -1
        if at >= 0:
            spans.append((at, at + len(content)))
            cursor = at + len(content)
    template = [not any(s < ce and e > cs for cs, ce in spans) or e <= s for s, e in offsets]
    # the template usually renders BOS itself: drop it, every chunk gets the prefix anyway
    p = list(prefix)
    if p and ids[:len(p)] == p:
        ids, template = ids[len(p):], template[len(p):]
    return ids, template, rendered


def plan_chunks(docs: Sequence[dict], tokenizer: Any, context_length: int, max_tokens: int,
                heldout_fraction: float) -> dict[str, Any]:
    """Tokenise documents until ``max_tokens`` content tokens and split them into chunks.

    Returns ``{"prefix", "chunks": [(doc_id, start, ids, template)], "docs": [doc rows], "tokens": int32 array}``;
    ids / template are numpy int32 / bool arrays (compact: Python int lists would cost ~36 bytes per token).
    """
    import numpy as np

    prefix = tokenizer_prefix(tokenizer)
    room = context_length - len(prefix)
    if room < 1:
        raise UserError(f"capture.context_length ({context_length}) must exceed the tokenizer's prefix length ({len(prefix)})")
    chunks, rows, flat = [], [], []
    sources: dict[str, int] = {}
    total = n_flat = 0
    for doc_id, doc in enumerate(docs):
        if total >= max_tokens:
            break
        ids, template, rendered = encode_doc(doc, tokenizer, prefix)
        ids, template = ids[:max_tokens - total], template[:max_tokens - total]
        if not ids:
            continue
        src = str(doc.get("source") or "default")
        sid = sources.setdefault(src, len(sources))
        rows.append({
            "doc_id": doc_id, "source": src, "source_id": sid, "category": doc.get("category"),
            "chat": bool(doc.get("chat")), "heldout": heldout_doc(doc_id, heldout_fraction),
            "n_tokens": len(ids), "offset": n_flat, "n_template": int(sum(template)), "text": rendered,
        })
        ids_a, tmpl_a = np.asarray(ids, dtype=np.int32), np.asarray(template, dtype=np.bool_)
        flat.append(ids_a)
        n_flat += len(ids)
        for start in range(0, len(ids), room):
            chunks.append((doc_id, start, ids_a[start:start + room], tmpl_a[start:start + room]))
        total += len(ids)
    tokens = np.concatenate(flat) if flat else np.zeros(0, dtype=np.int32)
    return {"prefix": prefix, "chunks": chunks, "docs": rows, "tokens": tokens,
            "sources": [{"id": i, "name": n} for n, i in sources.items()]}


# ----------------------------------------------------------------------------------------------------------------------
# Forward backends


def _unwrap(model: Any) -> Any:
    """The torch module behind a model (nnsight envoys keep it in ``_module``)."""
    return getattr(model, "_module", model)


def _layer_output(out: Any) -> Any:
    # transformers 5 decoder layers return a tensor; older versions a tuple whose first item is the hidden states
    return out[0] if isinstance(out, (tuple, list)) else out


class _HookRunner:
    def __init__(self, model: Any, layers: Sequence[int]):
        from lm_diff.models import decoder_layers

        self.model = _unwrap(model)
        self.layers = list(layers)
        self.mods = decoder_layers(self.model)

    def __call__(self, inputs: dict) -> dict[int, Any]:
        saved: dict[int, Any] = {}
        last = self.layers[-1]
        handles = []

        def make(layer):
            def hook(_mod, _inp, out):
                saved[layer] = _layer_output(out)
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


class _NNsightRunner:
    def __init__(self, model: Any, tokenizer: Any, layers: Sequence[int]):
        from nnsight import TransformersModel

        from lm_diff.models import decoder_layers_path

        if isinstance(model, TransformersModel):
            self.lm = model
        else:
            # a private copy: nnsight switches the tokenizer it holds to left padding (environment.md §3)
            self.lm = TransformersModel(model, tokenizer=copy.deepcopy(tokenizer))
        self.path = decoder_layers_path(_unwrap(model))
        self.layers = list(layers)

    def __call__(self, inputs: dict) -> dict[int, Any]:
        env = self.lm
        for part in self.path.split("."):
            env = getattr(env, part)
        saved = {}
        with self.lm.trace(dict(inputs), use_cache=False) as tracer:
            for layer in self.layers:
                out = env[layer].output
                saved[layer] = (out[0] if isinstance(out, (tuple, list)) else out).save()
            tracer.stop()
        return {k: v for k, v in saved.items()}


def _model_device(model: Any) -> Any:
    try:
        return next(_unwrap(model).parameters()).device
    except StopIteration:
        import torch

        return torch.device("cpu")


def _fingerprint_model(model: Any) -> dict:
    import torch

    m = _unwrap(model)
    w = m.get_input_embeddings().weight.detach().flatten()
    step = max(1, w.numel() // 65536)
    cfg = getattr(m, "config", None)
    cfg_json = cfg.to_json_string(use_diff=False) if cfg is not None else ""
    # the name is not part of the fingerprint: the same weights loaded from another path resume fine
    return {"config": hashlib.sha256(cfg_json.encode()).hexdigest()[:16],
            "weights": float(w[::step].to(torch.float64).sum())}


def model_label(model: Any, i: int) -> str:
    m = _unwrap(model)
    return str(getattr(m, "name_or_path", "") or getattr(getattr(m, "config", None), "_name_or_path", "") or f"model{i}")


# ----------------------------------------------------------------------------------------------------------------------
# Capture


def capture(models: list, tokenizer: Any, docs: list[dict], layers: list[int], out_dir: str | Path, cfg: Any,
            progress: bool = True, *, model_names: Optional[Sequence[str]] = None,
            callback: Optional[Callable[[dict], None]] = None) -> Path:
    """Capture paired activations of ``models`` on ``docs`` at decoder ``layers`` into the store ``out_dir``.

    ``models``: HF causal LMs (or nnsight ``TransformersModel``s) that passed ``models.check_pair``; the store keeps
    their order (index 0 = A, 1 = B, or P, A, B for the anchored design). ``docs``: ``{"text", "source", "category",
    "chat"}`` (chat rows may carry ``messages``). ``cfg``: a ``CaptureConfig``. Resumable: rerunning with the same
    inputs continues after the last committed shard; a complete store is returned as is. ``callback`` (tests, progress
    hooks) gets ``{"event": "batch"|"shard", "next_chunk", "rows"}`` after each batch and after each shard commit.
    """
    import torch

    from lm_diff.io import atomic_dir, hash_obj, read_json, save_safetensors, write_json, write_text
    from lm_diff.models import hidden_size, n_layers

    out = Path(out_dir)
    if not models:
        raise UserError("capture: no models given")
    layers = sorted(set(int(x) for x in layers))
    raw = [_unwrap(m) for m in models]
    d_model = hidden_size(raw[0])
    for i, m in enumerate(raw):
        if hidden_size(m) != d_model or n_layers(m) != n_layers(raw[0]):
            raise UserError(f"capture: model {i} does not match model 0 in hidden size or layer count; run models.check_pair first")
        if layers[0] < 0 or layers[-1] >= n_layers(m):
            raise UserError(f"capture: layers {layers} out of range for a model with {n_layers(m)} decoder layers")
    backend = getattr(cfg, "backend", "nnsight")
    names = list(model_names) if model_names else [model_label(m, i) for i, m in enumerate(models)]

    plan = plan_chunks(docs, tokenizer, cfg.context_length, cfg.max_tokens, cfg.heldout_fraction)
    chunks, prefix = plan["chunks"], plan["prefix"]
    if not chunks:
        raise UserError("capture: the documents hold no tokens; check the corpus sources")
    h_tok, h_tmpl = hashlib.sha256(), hashlib.sha256()
    for doc_id, start, cids, tmpl in chunks:
        h_tok.update(f"{doc_id}:{start}:{len(cids)};".encode())
        h_tok.update(cids.tobytes())
        h_tmpl.update(tmpl.tobytes())
    tok_hash = h_tok.hexdigest()[:16]
    fingerprint = hash_obj({
        "format": FORMAT, "models": [_fingerprint_model(m) for m in models], "layers": layers, "tokens": tok_hash,
        "prefix": prefix, "batch_size": cfg.batch_size, "shard_tokens": cfg.shard_tokens, "dtype": cfg.dtype,
        "heldout_fraction": cfg.heldout_fraction, "context_length": cfg.context_length,
        "templates": h_tmpl.hexdigest()[:16],
    })

    meta_path, prog_path = out / "meta.json", out / "progress.json"
    if meta_path.exists():
        meta = read_json(meta_path)
        if meta.get("fingerprint") == fingerprint:
            if progress:
                print(f"activation store already complete: {out} ({meta['n_tokens']} tokens)")
            return out
        raise UserError(f"{out} already holds a complete activation store captured with other models, documents or "
                        f"settings; delete it or choose another output directory")
    state = None
    if prog_path.exists():
        state = read_json(prog_path)
        if state.get("fingerprint") != fingerprint:
            print(f"warning: {out} holds a partial capture with other settings; starting over", file=sys.stderr)
            for f in out.glob("shard_*.safetensors"):
                f.unlink()
            prog_path.unlink()
            state = None
    out.mkdir(parents=True, exist_ok=True)
    if state is None:
        # deterministic side files first (rewritten identically on every fresh start)
        write_text(out / "docs.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in plan["docs"]))
        save_safetensors(out / "doc_tokens.safetensors", {"tokens": torch.from_numpy(plan["tokens"])})
        with atomic_dir(out / "tokenizer") as tdir:
            copy.deepcopy(tokenizer).save_pretrained(str(tdir))
        state = {"fingerprint": fingerprint, "next_chunk": 0, "shards": []}
        write_json(prog_path, state)

    doc_rows = {r["doc_id"]: r for r in plan["docs"]}
    runners = [(_NNsightRunner(m, tokenizer, layers) if backend == "nnsight" else _HookRunner(m, layers)) for m in models]
    devices = [_model_device(m) for m in models]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    P = len(prefix)
    total_rows = sum(len(c[2]) for c in chunks)
    done_rows = sum(s["rows"] for s in state["shards"])

    bar = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("capture"), BarColumn(), MofNCompleteColumn(), TextColumn("tokens"), TimeRemainingColumn())
        bar.start()
        task = bar.add_task("capture", total=total_rows, completed=done_rows)

    buf_acts: dict[int, list] = {layer: [] for layer in layers}
    buf_meta: dict[str, list] = {k: [] for k in ("token_id", "doc_id", "position", "source_id", "template", "heldout")}
    buf_rows = 0
    ci = state["next_chunk"]
    try:
        with torch.no_grad():
            while ci < len(chunks):
                batch = chunks[ci:ci + cfg.batch_size]
                T = P + max(len(c[2]) for c in batch)
                ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), T), dtype=torch.long)
                for r, (_, _, cids, _) in enumerate(batch):
                    ids[r, :P] = torch.tensor(prefix, dtype=torch.long)
                    ids[r, P:P + len(cids)] = torch.from_numpy(cids)
                    mask[r, :P + len(cids)] = 1
                keep = mask.bool()
                keep[:, :P] = False  # drop BOS / prefix positions
                per_model: dict[int, list] = {layer: [] for layer in layers}
                for run, dev in zip(runners, devices):
                    inputs = {"input_ids": ids.to(dev)}
                    if not bool(mask.all()):
                        inputs["attention_mask"] = mask.to(dev)
                    saved = run(inputs)
                    for layer in layers:
                        per_model[layer].append(saved[layer].detach()[keep.to(dev)].to("cpu", torch.float32))
                for layer in layers:
                    buf_acts[layer].append(torch.stack(per_model[layer], dim=1))  # [n, M, D]
                for doc_id, start, cids, tmpl in batch:
                    row = doc_rows[doc_id]
                    n = len(cids)
                    buf_meta["token_id"].append(torch.from_numpy(cids.copy()))
                    buf_meta["doc_id"].append(torch.full((n,), doc_id, dtype=torch.int32))
                    buf_meta["position"].append(torch.arange(start, start + n, dtype=torch.int32))
                    buf_meta["source_id"].append(torch.full((n,), row["source_id"], dtype=torch.int32))
                    buf_meta["template"].append(torch.from_numpy(tmpl.copy()))
                    buf_meta["heldout"].append(torch.full((n,), row["heldout"], dtype=torch.bool))
                n_rows = int(keep.sum())
                buf_rows += n_rows
                ci += len(batch)
                if bar is not None:
                    bar.update(task, advance=n_rows)
                if callback is not None:
                    callback({"event": "batch", "next_chunk": ci, "rows": buf_rows})
                if buf_rows >= cfg.shard_tokens or ci >= len(chunks):
                    idx = len(state["shards"])
                    info = write_shard(out / shard_name(idx), {l: torch.cat(v) for l, v in buf_acts.items()},
                                       {k: torch.cat(v) for k, v in buf_meta.items()}, cfg.dtype)
                    state["shards"].append(info)
                    state["next_chunk"] = ci
                    write_json(prog_path, state)  # commit point
                    buf_acts = {layer: [] for layer in layers}
                    buf_meta = {k: [] for k in buf_meta}
                    buf_rows = 0
                    if callback is not None:
                        callback({"event": "shard", "next_chunk": ci, "rows": info["rows"]})
    finally:
        if bar is not None:
            bar.stop()

    # finalise: stats, meta.json (its presence marks completion)
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
        "fingerprint": fingerprint,
        "models": names,
        "n_models": len(models),
        "layers": layers,
        "d_model": d_model,
        "dtype": cfg.dtype,
        "context_length": cfg.context_length,
        "prefix_ids": prefix,
        "backend": backend,
        "n_tokens": count,
        "n_docs": len(plan["docs"]),
        "n_chunks": len(chunks),
        "token_counts": {"all": count, "train": count - heldout_tokens, "heldout": heldout_tokens,
                         "template": sum(r["n_template"] for r in plan["docs"])},
        "sources": [{**s, "n_tokens": src_tokens.get(s["id"], 0), "n_docs": src_docs.get(s["id"], 0)} for s in plan["sources"]],
        "shards": state["shards"],
        "heldout": {"fraction": cfg.heldout_fraction, "unit": "document", "rule": HELDOUT_RULE},
        "position": "index among the document's content tokens (BOS/prefix excluded); chunks of context_length include the prefix",
        "activation": "output of decoder layer l (HF hidden_states[l+1]), BOS and padding dropped",
    }
    write_json(meta_path, meta)
    if progress:
        print(f"captured {count} tokens x {len(models)} models at layers {layers} (d={d_model}, {cfg.dtype}) -> {out}")
    return out


def remove_store(path: str | Path) -> None:
    """Delete a store directory (complete or partial)."""
    shutil.rmtree(path, ignore_errors=True)
