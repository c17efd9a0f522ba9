"""Where the diff stage computes: on the crosscoder's device (``crosscoder.device``; the trainer and ``CrossCoder.load``
put it there), with float64 accumulators on the same device except on MPS, which has no float64 (CPU there).

Every diff computation asks this module (``device.crosscoder_device(cc)``, called through the module so a test can
watch it) and moves the store's batches there before encoding; results come back to the CPU as numpy/pandas.
"""

from __future__ import annotations

from typing import Any

import torch


def crosscoder_device(cc: Any) -> torch.device:
    """The device of ``cc``'s parameters (CPU for stand-ins and raw tensors without any)."""
    if isinstance(cc, torch.Tensor):
        return cc.device
    params = getattr(cc, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


def stats_device(dev: torch.device) -> torch.device:
    """Where float64 statistics accumulate for work on ``dev``: ``dev`` itself, or the CPU for MPS."""
    return torch.device("cpu") if dev.type == "mps" else dev
