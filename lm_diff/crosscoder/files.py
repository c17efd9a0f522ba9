"""Reading a saved crosscoder's two files, with one UserError for each way they can be broken.

A truncated weights file, a pickle renamed ``.safetensors``, a config that is not JSON or of another format, and
weights of another shape (a different d_model or dictionary size) each give one message naming the file and the fix,
instead of a SafetensorError / RuntimeError traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from lm_diff.errors import UserError

FIX = "delete that folder (or rerun with --force) to train it again"


def read_config(path: Path, fmt: str) -> dict:
    """The crosscoder config at ``path``, checked to be of format ``fmt``."""
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable crosscoder config ({exc}); {FIX}") from None
    if not isinstance(cfg, dict) or cfg.get("format") != fmt:
        got = cfg.get("format") if isinstance(cfg, dict) else type(cfg).__name__
        raise UserError(f"{path}: unknown crosscoder format {got!r} (expected {fmt})")
    return cfg


def load_weights(path: Path, device: torch.device, load_state_dict: Callable[[dict], Any]) -> None:
    """Read the safetensors at ``path`` onto ``device`` and hand them to ``load_state_dict``."""
    try:
        load_state_dict(load_file(str(path), device=str(device)))
    except (SafetensorError, RuntimeError, OSError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: corrupt or mismatched crosscoder weights ({first[:200]}); {FIX}") from None
