"""Ctrl-C and SIGTERM during pretraining: the first one asks the loop to finish its episode and save, a
second one stops at once (the handler it replaced is back by then). torchrun and Slurm send SIGTERM.
Outside that loop (finetuning, compare's later steps, setup) SIGTERM stops the command as Ctrl-C does,
through `Stopped`, so it exits 143 with its cleanup run instead of dying where it is."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


class Stopped(KeyboardInterrupt):
    """A command stopped early by a signal (SIGINT, SIGTERM); the CLI exits 128 + `signal`."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signum)
        self.signal = signum


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM in the main thread raises Stopped(SIGTERM) where Ctrl-C would
    raise KeyboardInterrupt; the previous handler comes back after. Elsewhere, nothing changes."""

    def handler(signum: int, frame: Any) -> None:
        raise Stopped(signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
