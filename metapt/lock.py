"""One run per output folder: an exclusive `flock` on FOLDER/.metapt.lock while a run writes, naming
the command, pid, host and start time for whoever finds it busy. The kernel releases it when the
process ends, however it ends, so a lock left by a killed process never blocks."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from metapt.errors import MetaptError

LOCK = ".metapt.lock"


class Lock:
    """An exclusive lock on an output folder for the life of one run (released when the process ends)."""

    def __init__(self, folder: Path, command: str):
        self.folder, self.command, self.fd = folder, command, -1
        self.warning = ""

    def _busy(self, fd: int) -> MetaptError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
        return MetaptError(
            f"{self.folder} is in use by {holder}; wait for it to finish, or write elsewhere with --output-dir"
        )

    def probe(self) -> None:
        """MetaptError when another process holds the lock now; writes nothing."""
        try:
            import fcntl

            fd = os.open(self.folder / LOCK, os.O_RDONLY)
        except (ImportError, OSError):  # no lock file: nobody holds it
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._busy(fd) from None
        except OSError:
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> Lock:
        try:
            import fcntl
        except ImportError:  # Windows: no flock
            self.warning = f"{self.folder}: no file locking on this platform; run one metapt per folder"
            return self
        self.fd = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            busy = self._busy(self.fd)
            os.close(self.fd)
            raise busy from None
        except OSError as e:  # a filesystem without locks (some network mounts)
            self.warning = f"{self.folder}: cannot lock the folder ({e.strerror}); run one metapt per folder"
            return self
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(self.fd, 0)
        os.pwrite(
            self.fd,
            f"{self.command} (pid {os.getpid()} on {socket.gethostname()}, since {since})".encode(),
            0,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = -1
