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
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

__all__ = ["GracefulStop"]


class GracefulStop:
    """Context manager that turns SIGINT/SIGTERM into a stop request.

    Attributes:
        signum: the signal received (``None`` while none was).
        from_peer: the stop was requested by another process of the group (see
            :meth:`request`), not by a signal to this one.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self.from_peer = False
        self._previous: dict[int, object] = {}

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

    def __enter__(self) -> "GracefulStop":
        if self.enabled:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self.handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
