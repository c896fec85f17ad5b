"""Peak memory of a selection against a plain training step, for `metapt bench`: on CUDA
`torch.cuda.max_memory_allocated`; on CPU Linux's peak resident set size (VmHWM), reset between the
measurements by writing 5 to /proc/self/clear_refs (after returning freed memory to the system).
Each figure is the larger of a few alternations, each from a reset peak; `*_extra_bytes` are above
the memory held before (weights, optimizer state, the libraries)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from metapt import runsteps
from metapt.runstate import Run


def _status(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    if match is None:
        raise OSError(f"no {field} in /proc/self/status")
    return int(match.group(1)) * 1024


def _reset_rss_peak() -> int:
    """Return freed memory to the system, reset VmHWM to VmRSS, and return that baseline."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def peak_probe(device: torch.device) -> tuple[Callable[[], int] | None, Callable[[], int] | None, str]:
    """(reset -> baseline bytes, read peak bytes, method) for `device`; (None, None, why) when this
    machine cannot measure it. On CPU: checked here by freeing 256 MiB and seeing the peak come back."""
    if device.type == "cuda":

        def reset() -> int:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            return torch.cuda.memory_allocated(device)

        return reset, lambda: torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    try:
        _reset_rss_peak()
        block = torch.ones(64 * 1024 * 1024)  # 256 MiB, written
        raised = _status("VmHWM")
        del block
        after = _reset_rss_peak()
        if _status("VmHWM") > raised - 128 * 1024 * 1024 or after > raised - 128 * 1024 * 1024:
            return None, None, "VmHWM did not come back down after writing 5 to /proc/self/clear_refs"
    except OSError as e:
        return None, None, f"cannot reset the peak RSS here: {e}"
    return _reset_rss_peak, lambda: _status("VmHWM"), "VmHWM (/proc/self/status), reset via clear_refs"


def memory(
    run: Run, views: dict[str, Run], train_step: Callable[[str], None], rounds: int = 2
) -> dict[str, Any]:
    """Peak memory of `train_step(source)` for every source (the largest), and of one
    `runsteps.select_run` of every view (a run sharing the model: the spec's selection and variants)."""
    reset, peak, method = peak_probe(run.device)
    out: dict[str, Any] = {"memory_method": method if reset else None, "selections": {}}
    if reset is None or peak is None:
        out.update(train_peak_bytes=None, train_extra_bytes=None, memory_reason=method)
        return out
    train, train_extra = 0, 0
    selections = dict.fromkeys(views, (0, 0))
    for _ in range(rounds):
        for s in run.sources:
            base = reset()
            train_step(s)
            train, train_extra = max(train, peak()), max(train_extra, peak() - base)
        for name, v in views.items():
            base = reset()
            picked = runsteps.select_run(v)
            top, extra = peak(), peak() - base
            del picked
            selections[name] = (max(selections[name][0], top), max(selections[name][1], extra))
    out.update(train_peak_bytes=train, train_extra_bytes=train_extra)
    for name, (top, extra) in selections.items():
        out["selections"][name] = {
            "peak_bytes": top,
            "extra_bytes": extra,
            "memory_ratio": top / train,
            "memory_extra_ratio": extra / train_extra if train_extra > 0 else None,
        }
    return out
