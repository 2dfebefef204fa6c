"""Graceful stop on SIGINT/SIGTERM: finish the current step, checkpoint, exit cleanly.

While :class:`GracefulStop` is active the first SIGINT or SIGTERM only sets a flag that the
training loop reads after each step; a second SIGINT raises ``KeyboardInterrupt`` at once
(for a user who really wants out). Handlers are installed only in the main thread and the
previous handlers are restored on exit.

In a multi-process run a signal may reach one process only (``kill PID``, a node's OOM
watchdog) or every process at slightly different moments (SLURM, torchrun forwarding its own
SIGTERM). The training loop therefore agrees on the stop after every step: it takes the
largest signal number over all ranks and hands it to :meth:`GracefulStop.request` on the
ranks that saw none, so every rank stops after the same step, rank 0 writes the checkpoint,
and every process exits with the same code. No rank is left waiting in a collective.

Outside the training loop (checking data, evaluating, a workflow between its runs),
:class:`StopOnSignal` turns SIGINT and SIGTERM into :class:`RunInterrupted` at once; a
workflow that sees a training run stop early (``TrainResult.stopped_by``) raises the same
exception, so the demo, a study or an experiment never goes on to evaluate or report
unfinished training. The command line exits with ``RunInterrupted.exit_code`` (130/143)
after printing its message, which says how to continue.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

__all__ = ["GracefulStop", "RunInterrupted", "StopOnSignal", "stop_if_interrupted"]


class _SignalHandlers:
    """Installs the subclass's ``handle(signum, frame)`` for SIGINT and SIGTERM in the main
    thread while active, and restores the previous handlers on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self._previous: dict[int, object] = {}

    def __enter__(self):
        if self.enabled:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self.handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


class GracefulStop(_SignalHandlers):
    """Context manager that turns SIGINT/SIGTERM into a stop request.

    Attributes:
        signum: the signal received (``None`` while none was).
        from_peer: the stop was requested by another process of the group (see
            :meth:`request`), not by a signal to this one.
    """

    def __init__(self, enabled: bool = True):
        super().__init__(enabled)
        self.signum: int | None = None
        self.from_peer = False

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """Shell convention 128 + signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + int(self.signum) if self.signum is not None else 0

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def handle(self, signum: int, frame: FrameType | None = None) -> None:
        """The signal handler (also callable directly, e.g. from tests)."""
        if self.from_peer:  # this process's own first signal after a peer's: still graceful
            self.from_peer = False
            return
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def request(self, signum: int) -> None:
        """Record a stop that another process of the group received (``signum``)."""
        if self.signum is None:
            self.signum = int(signum)
            self.from_peer = True


class RunInterrupted(BaseException):
    """A command was stopped by SIGINT/SIGTERM (a ``BaseException``, like ``KeyboardInterrupt``,
    so that no ``except Exception`` on the way swallows it).

    Attributes:
        signum: the signal.
        exit_code: 128 + ``signum`` (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, signum: int, message: str = ""):
        self.signum = int(signum)
        name = signal.Signals(self.signum).name
        super().__init__(message or f"stopped by {name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class StopOnSignal(_SignalHandlers):
    """Context manager: SIGINT and SIGTERM raise :class:`RunInterrupted` in the main thread.

    The training loop's :class:`GracefulStop` replaces these handlers while it runs (a
    signal then ends the current step and saves) and restores them afterwards. Without it,
    SIGTERM would end the process at once, without a message or a clean exit code.
    """

    def handle(self, signum: int, frame: FrameType | None = None) -> None:
        raise RunInterrupted(signum, f"stopped by {signal.Signals(signum).name}")


def stop_if_interrupted(result, what: str, how_to_continue: str) -> None:
    """Raise :class:`RunInterrupted` when a training run (a ``TrainResult``) was stopped by a signal.

    Args:
        result: what :func:`medcontext.engine.train` returned.
        what: the run, for the message (e.g. ``"the baseline run in demo/baseline"``).
        how_to_continue: the sentence that says how to continue.
    """
    stopped_by = getattr(result, "stopped_by", "")
    if stopped_by in ("SIGINT", "SIGTERM"):
        raise RunInterrupted(
            signal.Signals[stopped_by].value,
            f"{stopped_by} stopped {what} after step {result.step} of {result.total_steps}; its last.pt is "
            f"saved and nothing was evaluated. {how_to_continue}",
        )
