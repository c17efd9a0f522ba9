"""Resumable training checkpoints: model, Adam moments, dead-latent counters and RNG states in one safetensors file
(RNG states as uint8 tensors; no pickle) plus ``state.json`` (step, data position), written atomically."""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from safetensors.torch import load_file

from lm_diff.crosscoder.model import CrossCoder
from lm_diff.io import atomic_dir, save_safetensors, write_json, write_text

CKPT_DIR = "checkpoint"


def _rng_tensors() -> dict[str, torch.Tensor]:
    py = json.dumps(random.getstate()[1]).encode()
    np_state = np.random.get_state()
    return {
        "rng.torch": torch.get_rng_state(),
        "rng.python": torch.frombuffer(bytearray(py), dtype=torch.uint8).clone(),
        "rng.numpy": torch.from_numpy(np_state[1].astype(np.uint32).view(np.uint8).copy()),
        "rng.numpy_pos": torch.tensor([np_state[2]], dtype=torch.int64),
    }


def _set_rng(t: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(t["rng.torch"].cpu())
    py = json.loads(bytes(t["rng.python"].cpu().tolist()).decode())
    random.setstate((3, tuple(py), None))
    np.random.set_state(("MT19937", t["rng.numpy"].cpu().numpy().view(np.uint32).copy(), int(t["rng.numpy_pos"][0]),
                         0, 0.0))


def save_checkpoint(out_dir: Path, cc: CrossCoder, opt: torch.optim.Adam, since_fired: torch.Tensor,
                    state: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in cc.state_dict().items()}
    for i, p in enumerate(cc.parameters()):
        st = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq", "step"):
            if key in st:
                v = st[key]
                tensors[f"adam.{i}.{key}"] = v if torch.is_tensor(v) else torch.tensor(float(v))
    tensors["since_fired_L"] = since_fired
    tensors.update(_rng_tensors())
    with atomic_dir(out_dir / CKPT_DIR) as tmp:
        save_safetensors(tmp / "state.safetensors", tensors)
        write_json(tmp / "state.json", state)


def load_checkpoint(out_dir: Path, cc: CrossCoder, opt: torch.optim.Adam,
                    device: torch.device) -> Optional[tuple[dict, torch.Tensor]]:
    """Restore ``cc``, ``opt`` and the RNGs from ``out_dir``'s checkpoint onto ``device``; ``(state, since_fired_L)``
    or None when there is none."""
    d = out_dir / CKPT_DIR
    if not (d / "state.json").exists():
        return None
    state = json.loads((d / "state.json").read_text(encoding="utf-8"))
    t = load_file(str(d / "state.safetensors"), device=str(device))
    cc.load_state_dict({k[len("model."):]: v for k, v in t.items() if k.startswith("model.")})
    for i, p in enumerate(cc.parameters()):
        if f"adam.{i}.exp_avg" in t:
            opt.state[p] = {"step": t[f"adam.{i}.step"].clone(), "exp_avg": t[f"adam.{i}.exp_avg"].clone(),
                            "exp_avg_sq": t[f"adam.{i}.exp_avg_sq"].clone()}
    _set_rng(t)
    return state, t["since_fired_L"].clone()


def truncate_log(path: Path, step: int) -> None:
    """Keep log lines of steps < ``step`` (those after the checkpoint are redone)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            if json.loads(line)["step"] < step:
                keep.append(line)
    write_text(path, "".join(l + "\n" for l in keep))
