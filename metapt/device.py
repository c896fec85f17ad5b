"""Where a run computes and in which precision: the device a name picks, and its autocast.

Both pretraining (engine.py) and finetuning (finetune.py) use these, so neither imports the other
to pick a device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from metapt.errors import MetaptError


def pick_device(name: str) -> torch.device:
    """`auto`: CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MetaptError(f"[run].device = {name!r} but no CUDA device is available; use 'cpu' or 'auto'")
    if name == "mps" and not torch.backends.mps.is_available():
        raise MetaptError("[run].device = 'mps' but no Apple GPU (MPS) is available; use 'cpu' or 'auto'")
    return torch.device(name)


def autocast_for(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16 autocast on CUDA by default; fp32 elsewhere unless asked."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext
    if precision == "fp16" and device.type != "cuda":
        raise MetaptError("[run].precision = 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)
