"""Ctrl-C and SIGTERM during pretraining: the first one asks the loop to finish its episode and save, a
second one stops at once (the handler it replaced is back by then). torchrun and Slurm send SIGTERM."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class Interrupt:
    """Whether a stop was asked for, and by which signal (0: none)."""

    asked: bool = False
    signal: int = 0


@contextlib.contextmanager
def interrupts() -> Iterator[Interrupt]:
    """Catch the first SIGINT / SIGTERM into the yielded Interrupt while the block runs; the previous
    handlers come back however the block ends (a NaN, a crash). Outside the main thread, where Python
    allows no handler, nothing is caught and Ctrl-C behaves as usual."""
    stop = Interrupt()
    try:
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum: int, frame: Any) -> None:
            stop.asked, stop.signal = True, stop.signal or signum
            signal.signal(signum, previous[signum])  # a second one: the usual behaviour, at once

        for s in previous:
            signal.signal(s, handler)
    except ValueError:  # not the main thread
        previous = {}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
