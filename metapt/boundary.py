"""The `metapt` command line's one error boundary: the consoles it prints on, and the typer group
that turns every error into a message and an exit code (bad input 2, anything else 1; 128 + the
signal on an interrupt)."""

from __future__ import annotations

import difflib
import errno
import os
import signal
import sys

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from metapt.errors import MetaptError, TrainingError
from metapt.interrupts import terminate_as_interrupt

# emoji off: a file name such as `a:x:b` must print as written, not with an emoji in it.
console = Console(emoji=False)
err = Console(stderr=True, emoji=False)

# Usage errors are click's exceptions: typer >= 0.20 raises those of its bundled copy of click
# (typer._click), older typers those of the click package. typer.BadParameter is one of them on
# every version, so its module names the right ones.
_CLICK_ERRORS = sys.modules[typer.BadParameter.__module__]


def usage_error(e: BaseException) -> bool:
    """A click usage error (bad or missing option or argument, unknown command), which typer's own
    handler prints with the command's usage line and exits 2."""
    return isinstance(e, _CLICK_ERRORS.ClickException)


def _debug() -> bool:
    return os.environ.get("METAPT_DEBUG", "") not in ("", "0")


class Boundary(TyperGroup):
    """The one place errors become messages: bad input exits 2, anything else 1; a traceback only
    with --debug or METAPT_DEBUG=1."""

    def resolve_command(self, ctx: typer.Context, args: list[str]) -> tuple:
        """The command named first in `args`; an unknown one gets a did-you-mean on every typer
        version (older typers do not suggest one)."""
        try:
            return super().resolve_command(ctx, args)
        except _CLICK_ERRORS.UsageError as e:
            close = difflib.get_close_matches(args[0] if args else "", self.list_commands(ctx), n=1)
            if close and "did you mean" not in e.message.lower():
                e.message = f"{e.message} Did you mean {close[0]!r}?"
            raise

    def invoke(self, ctx: typer.Context) -> object:
        try:
            with terminate_as_interrupt():
                return super().invoke(ctx)
        except MetaptError as e:
            if _debug():
                raise
            _bad_input(e)
            raise typer.Exit(2) from None
        except TrainingError as e:
            if _debug():
                raise
            err.print(f"[bold red]training stopped:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (interrupts.Stopped): 128 + the signal
            err.print("interrupted")
            raise typer.Exit(128 + getattr(e, "signal", signal.SIGINT)) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as e:
            if _debug() or usage_error(e) or getattr(e, "errno", None) == errno.EPIPE:
                raise  # typer prints usage errors with the usage line (exit 2), and handles EPIPE
            if isinstance(e, OSError) and e.filename:  # a file the system refused: disk full, permission
                full = " (the disk is full: free some space)" if e.errno == errno.ENOSPC else ""
                err.print(
                    f"error: {e.filename}: {e.strerror}{full}", markup=False, highlight=False, soft_wrap=True
                )
                raise typer.Exit(2) from None
            err.print(  # a bug: say what, and how to see where
                f"[bold red]internal error:[/] {type(e).__name__}: {escape(str(e))} "
                "(run with --debug or METAPT_DEBUG=1 for the traceback)",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(1) from None


def _bad_input(e: MetaptError) -> None:
    """Print a bad input's message (exit 2), once per torchrun job where every rank meets it."""
    if (said := _rank_label()) is not None:
        err.print(f"[bold red]error:[/] {said}{escape(str(e))}", highlight=False, soft_wrap=True)


def _rank_label() -> str | None:
    """How a torchrun rank starts its error message: "" on rank 0 (and without torchrun), "rank N: "
    on another rank once the ranks have joined (a shard's record may fail on one rank alone); None,
    say nothing, on a machine's other ranks before then, where its first rank reads the same command,
    spec and files and says the same (a bad spec was printed once per rank)."""
    world, local = (os.environ.get(k, "").strip() for k in ("WORLD_SIZE", "LOCAL_RANK"))
    if not world.isdigit() or int(world) <= 1:  # no torchrun (a bad value has its own error)
        return ""
    dist = sys.modules.get("torch.distributed")  # imported by then whenever a group was joined
    if dist is not None and dist.is_available() and dist.is_initialized():
        return f"rank {dist.get_rank()}: " if dist.get_rank() != 0 else ""
    return None if local.isdigit() and int(local) > 0 else ""
