"""Capture corpus sources: local txt / jsonl / parquet files, a HF dataset the user has, or built-in generated text.

Each source yields documents ``{"text", "source", "category", "chat"[, "messages"]}`` until its token share is filled.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Iterator

from lm_diff.console import err
from lm_diff.errors import UserError
from lm_diff.organisms import corpus_docs


def source_format(src: Any) -> str:
    if src.format != "auto":
        return src.format
    if src.path.startswith("organisms:"):
        return "organisms"
    suffix = Path(src.path).suffix.lower()
    return {".txt": "txt", ".md": "txt", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}.get(suffix, "hf")


def _label(src: Any) -> str:
    if src.label:
        return src.label
    if src.path.startswith("organisms:"):
        return "corpus:" + src.path.split(":", 1)[1]
    return "corpus:" + Path(src.path).stem


def _row_to_doc(row: Any, src: Any, where: str) -> dict | None:
    if isinstance(row, str):
        return {"text": row}
    if not isinstance(row, dict):
        raise UserError(f"{where}: rows must be objects or strings, got {type(row).__name__}")
    value = row.get(src.text_field)
    if value is None and "messages" in row:
        value = row["messages"]
    if value is None:
        raise UserError(f"{where}: a row has no field {src.text_field!r}; set text_field to the field that holds the text")
    if isinstance(value, list):  # a conversation: [{role, content}]
        msgs = [{"role": m.get("role", "user"), "content": str(m.get("content", ""))} for m in value if isinstance(m, dict)]
        if not msgs:
            return None
        return {"text": "\n".join(m["content"] for m in msgs), "messages": msgs}
    return {"text": str(value)}


def _iter_rows(src: Any, fmt: str, seed: int, where: str) -> Iterator[Any]:
    if fmt == "organisms":
        genre = src.path.split(":", 1)[1] or "neutral"
        batch, k = 64, 0
        while True:
            docs = corpus_docs(genre, batch, seed + 1000 * k)
            if not docs:
                return
            yield from docs
            k += 1
    if fmt == "hf":
        try:
            import datasets  # noqa: PLC0415 - heavy (seconds); only hub dataset sources need it
        except ImportError as exc:  # pragma: no cover
            raise UserError(f"{where}: reading HF datasets needs the 'datasets' package") from exc
        try:
            ds = datasets.load_dataset(src.path, split="train", streaming=True)
        except (OSError, ValueError, RuntimeError) as exc:  # not found, offline, bad config / split
            raise UserError(
                f"{where}: could not open dataset {src.path!r} ({type(exc).__name__}: {exc}); "
                "point path at a local txt/jsonl/parquet file or make the dataset available offline"
            ) from None
        yield from ds
        return
    path = Path(src.path).expanduser()
    if not path.exists():
        raise UserError(f"{where}: file {src.path!r} not found; fix capture.corpus path")
    if fmt == "txt":
        text = path.read_text(encoding="utf-8", errors="replace")
        for para in text.split("\n\n"):
            if para.strip():
                yield para.strip()
    elif fmt == "jsonl":
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{where}: {path} line {n} is not valid JSON ({exc.msg})") from None
    elif fmt == "parquet":
        import pyarrow.parquet as pq  # noqa: PLC0415 - only parquet sources need pyarrow

        table = pq.read_table(path)
        if src.text_field not in table.column_names:
            raise UserError(f"{where}: {path} has no column {src.text_field!r}; columns: {', '.join(table.column_names)}")
        for value in table.column(src.text_field).to_pylist():
            yield {src.text_field: value}
    else:  # pragma: no cover - Literal-checked in config
        raise UserError(f"{where}: unknown format {fmt!r}")


def read_source(src: Any, tokenizer: Any, budget_tokens: int, seed: int = 0, where: str = "capture.corpus") -> list[dict]:
    """Documents of one source until about ``budget_tokens`` tokens (counted with ``tokenizer``) or ``max_docs``."""
    fmt = source_format(src)
    label = _label(src)
    out: list[dict] = []
    used = 0
    for row in _iter_rows(src, fmt, seed, where):
        if used >= budget_tokens or (src.max_docs is not None and len(out) >= src.max_docs):
            break
        doc = _row_to_doc(row, src, where)
        if doc is None or not doc["text"].strip():
            continue
        n = len(tokenizer(doc["text"], add_special_tokens=False, verbose=False)["input_ids"])
        doc.update({"source": label, "category": None, "chat": bool(src.chat), "n_tokens": n})
        used += n
        out.append(doc)
    if not out:
        raise UserError(f"{where}: source {src.path!r} produced no documents")
    return out


def read_corpus(sources: list, tokenizer: Any, budget: int, seed: int, prompt_tokens: int, min_tokens: int) -> list[dict]:
    """Documents of every source, each filled to its weighted share of ``budget`` tokens, interleaved (so a truncated
    budget still sees every source). A source that runs out before its share is named with its numbers; a corpus of
    fewer than ``min_tokens`` (one training batch) is refused: the crosscoder would learn the ``prompt_tokens`` of
    benchmark and grounding prompts captured with it instead of the corpus."""
    total_w = sum(s.weight for s in sources) or 1.0
    docs: list[dict] = []
    for k, src in enumerate(sources):
        share = int(budget * src.weight / total_w)
        got = read_source(src, tokenizer, share, seed=seed + k, where=f"capture.corpus[{k}]")
        n = sum(d["n_tokens"] for d in got)
        if n < share:
            err().print(f"warning: capture.corpus[{k}] ({src.path}) ran out at {n:,} tokens of its {share:,}-token "
                        "share of capture.max_tokens; the capture is that much shorter (add text or lower max_tokens)")
        docs.extend(got)
    n = sum(d["n_tokens"] for d in docs)
    if sources and n < min_tokens:
        raise UserError(f"capture.corpus holds {n:,} tokens, fewer than one crosscoder training batch "
                        f"(crosscoder.batch_size = {min_tokens:,}): the crosscoder would learn the {prompt_tokens:,} "
                        "tokens of benchmark and grounding prompts instead of the corpus; add text to capture.corpus")
    if sources and n < prompt_tokens:
        err().print(f"warning: capture.corpus gave {n:,} tokens, fewer than the {prompt_tokens:,} tokens of benchmark "
                    "and grounding prompts captured with it: those prompts dominate what the crosscoder learns")
    random.Random(seed).shuffle(docs)
    return docs
