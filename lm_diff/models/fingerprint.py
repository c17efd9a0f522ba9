"""Model fingerprints that change when the weights change.

- Local directories: the sha256 of every file's full content, streamed in 8 MiB blocks. Hashing 18 GB of weights
  takes about a minute, so each file's digest is cached by (resolved path, size, mtime_ns) under
  ``$LM_DIFF_CACHE/hashes`` (default ``~/.cache/lm_diff/hashes``; one JSON per file, written atomically). A file
  rewritten in place gets a new mtime, so its stale digest is never used.
- Hub ids: the commit hash the local HF cache resolves the revision to (``refs/<revision>``; a 40-hex revision is a
  commit already). Without a cached copy the fingerprint holds the name and revision only (``commit: None``).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Optional

from huggingface_hub import constants as hf_constants

from lm_diff.io import hash_obj, read_json, write_json
from lm_diff.organisms.build import cache_root

_BLOCK = 8 << 20
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def hash_cache_dir() -> Path:
    return cache_root() / "hashes"


def file_sha256(path: Path) -> str:
    """Full-content sha256 of ``path``, cached by (resolved path, size, mtime_ns)."""
    path = Path(path).resolve()
    st = path.stat()
    key = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    entry = hash_cache_dir() / f"{hash_obj(key, 32)}.json"
    if entry.exists():
        try:
            cached = read_json(entry)
        except (OSError, ValueError):
            cached = None
        if isinstance(cached, dict) and cached.get("key") == key and isinstance(cached.get("sha256"), str):
            return cached["sha256"]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            h.update(block)
    digest = h.hexdigest()
    try:
        write_json(entry, {"key": key, "sha256": digest})
    except OSError:  # a read-only cache only costs the rehash next time
        pass
    return digest


def hub_commit(spec: str, revision: Optional[str]) -> Optional[str]:
    """Commit hash of ``spec`` at ``revision`` (default ``main``) in the local HF cache, or None if not cached."""
    rev = revision or "main"
    if _COMMIT.match(rev):
        return rev
    ref = Path(hf_constants.HF_HUB_CACHE) / ("models--" + spec.replace("/", "--")) / "refs" / rev
    try:
        commit = ref.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return commit if _COMMIT.match(commit) else None


def model_fingerprint(spec: str, path: Optional[Path], revision: Optional[str] = None) -> dict[str, Any]:
    """``{"spec", "content"}`` for a local directory (sha256 over every file's name and full-content digest, in name
    order, subfolders included); ``{"spec", "revision", "commit"}`` for a hub id."""
    fp: dict[str, Any] = {"spec": spec}
    if path is None or not Path(path).is_dir():
        fp.update(revision=revision, commit=hub_commit(spec, revision))
        return fp
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = f.relative_to(root).as_posix()
        if any(part.startswith(".") for part in rel.split("/")):
            continue  # editor / cache droppings (.cache/huggingface, .DS_Store) are not the model
        h.update(rel.encode() + b"\0" + file_sha256(f).encode() + b"\n")
    fp["content"] = h.hexdigest()[:16]
    return fp


__all__ = ["file_sha256", "hub_commit", "model_fingerprint", "hash_cache_dir"]
