"""Tokenisation for capture: the shared tokenizer's prefix, chat rendering with a template mask, and chunking.

Plain documents are encoded without special tokens; chat documents (``chat: True``; ``messages`` = [{role, content}]
or ``text`` as one user turn) are rendered with the tokenizer's chat template and get a per-token **template mask**
(True where the token's characters lie outside every message's content, from the fast tokenizer's offsets). The
tokenizer's own prefix (the ids ``tokenizer("x")`` puts before the text, normally BOS; empty for GPT-2-style
tokenizers) is prepended to every chunk, long documents are split into chunks of ``context_length`` tokens (prefix
included), and the budget ``max_tokens`` counts content tokens only.

``shard_plan`` groups the chunks into batches and shards exactly as capture writes them, so a stream can recompute
any shard on its own.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np

from lm_diff.capture.store import heldout_doc
from lm_diff.errors import UserError


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

    Returns ``{"prefix", "chunks": [(doc_id, start, ids, template)], "docs": [doc rows], "tokens": int32 array,
    "cut": None or {doc_id, source, kept, n_tokens} (the document the budget cut short), "dropped": documents the
    budget left out}``; ids / template are numpy int32 / bool arrays (compact: Python int lists would cost ~36 bytes
    per token).
    """
    prefix = tokenizer_prefix(tokenizer)
    room = context_length - len(prefix)
    if room < 1:
        raise UserError(f"capture.context_length ({context_length}) must exceed the tokenizer's prefix length ({len(prefix)})")
    chunks, rows, flat = [], [], []
    sources: dict[str, int] = {}
    total = n_flat = dropped = 0
    cut = None
    for doc_id, doc in enumerate(docs):
        if total >= max_tokens:
            dropped = len(docs) - doc_id
            break
        ids, template, rendered = encode_doc(doc, tokenizer, prefix)
        if len(ids) > max_tokens - total:
            cut = {"doc_id": doc_id, "source": str(doc.get("source") or "default"), "kept": max_tokens - total,
                   "n_tokens": len(ids)}
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
            "sources": [{"id": i, "name": n} for n, i in sources.items()], "cut": cut, "dropped": dropped}


def budget_note(plan: dict, max_tokens: int) -> str | None:
    """One line saying what the token budget cut (a document cut short, documents left out), or None."""
    cut, dropped = plan.get("cut"), plan.get("dropped", 0)
    if not cut and not dropped:
        return None
    parts = []
    if cut:
        parts.append(f"cut document {cut['doc_id']} (source {cut['source']}) to {cut['kept']:,} of its "
                     f"{cut['n_tokens']:,} tokens")
    if dropped:
        parts.append(f"left out the last {dropped:,} document(s)")
    return f"capture.max_tokens ({max_tokens:,}) {' and '.join(parts)}; raise capture.max_tokens to keep them"


def chunk_hashes(chunks: Sequence[tuple]) -> tuple[str, str]:
    """Short sha256 of the chunk layout + token ids, and of the template masks (part of the store fingerprint)."""
    h_tok, h_tmpl = hashlib.sha256(), hashlib.sha256()
    for doc_id, start, cids, tmpl in chunks:
        h_tok.update(f"{doc_id}:{start}:{len(cids)};".encode())
        h_tok.update(cids.tobytes())
        h_tmpl.update(tmpl.tobytes())
    return h_tok.hexdigest()[:16], h_tmpl.hexdigest()[:16]


def shard_plan(chunks: Sequence[tuple], batch_size: int, shard_tokens: int) -> list[tuple[int, int, int]]:
    """``(first_chunk, end_chunk, rows)`` of every shard: batches of ``batch_size`` chunks from chunk 0, and a shard
    closes after the batch that brings it to ``shard_tokens`` rows (or after the last batch)."""
    out: list[tuple[int, int, int]] = []
    start = rows = 0
    ci = 0
    while ci < len(chunks):
        batch = chunks[ci:ci + batch_size]
        rows += sum(len(c[2]) for c in batch)
        ci += len(batch)
        if rows >= shard_tokens or ci >= len(chunks):
            out.append((start, ci, rows))
            start, rows = ci, 0
    return out
