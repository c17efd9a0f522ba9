"""Store size estimate and the free-disk check run before any capture writes.

size = tokens x (models x layers x d_model x bytes per value + 18 bytes of per-token metadata) + side files; model by
model capture also holds, at worst, one shard's worth of the earlier models' parts next to the store.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lm_diff.capture.store import META_BYTES_PER_TOKEN
from lm_diff.errors import UserError

DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
# docs.jsonl, doc_tokens, tokenizer, stats, meta: a margin for the side files
SIDE_BYTES = 64 << 20


def store_bytes(n_tokens: int, n_models: int, n_layers: int, d_model: int, dtype: str) -> int:
    """Bytes of an activation store's shards: activations plus per-token metadata."""
    return int(n_tokens) * (n_models * n_layers * d_model * DTYPE_BYTES[dtype] + META_BYTES_PER_TOKEN)


def free_bytes(path: Path) -> int:
    """Free space on the filesystem that holds ``path`` (its nearest existing parent)."""
    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def check_free_disk(out: Path, need: int) -> None:
    """UserError before anything is written when ``need`` bytes do not fit next to ``out``."""
    free = free_bytes(out)
    if need <= free:
        return
    raise UserError(
        f"capture: the activation store needs about {_gb(need)} in {out} but only {_gb(free)} is free there. "
        f"Options: stream activations straight into training instead of storing them "
        f"(lm_diff.capture.stream.ActivationStream), capture fewer tokens (capture.max_tokens) or fewer layers, store "
        f"float16/bfloat16 instead of float32 (capture.dtype), or write the run to a folder on a larger disk (--out)")
