"""Stop signals: a run saves at the next step boundary instead of dying mid-step.

SIGTERM / SIGUSR1 (what SLURM sends before pre-emption), SIGUSR2 (what submitit asks SLURM to send
before a time-out) and SIGINT (Ctrl-C; a second one aborts at once) are recorded; the loop checks
for one after each step, saves ``latest.pt`` and raises ``Preempted``.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

log = logging.getLogger("openjepa")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step."""


class Preempted(RuntimeError):
    """SIGTERM, SIGUSR1, SIGUSR2 or SIGINT (Ctrl-C) arrived; the run saved latest.pt at the next step
    boundary and stopped. ``signum`` says which."""

    def __init__(self, message: str, signum: int = signal.SIGTERM):
        super().__init__(message)
        self.signum = signum


class StopSignals:
    """Records the stop signals instead of dying mid-step. ``hand_on`` then passes the signal to the
    handler that was there before (submitit's requeues the job), once the checkpoint is saved."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self.frame = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._record)

    def _record(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            if self.received is not None:  # a stop is already pending: Ctrl-C now aborts without waiting
                raise KeyboardInterrupt
            log.warning(
                "Ctrl-C: saving a checkpoint at the end of this step, then stopping (Ctrl-C again to abort "
                "without saving)"
            )
        elif self.received is not None:
            return  # the first signal decides (e.g. SLURM's SIGUSR1, whose handler requeues the job)
        self.received, self.frame = signum, frame

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def hand_on(self) -> None:
        """Restore the previous handlers and call the one for the received signal when it is a
        Python function (submitit's checkpoint-and-requeue); a default or ignored disposition is
        left alone: the caller stops the run."""
        if self.received in (None, signal.SIGINT):  # Python's own SIGINT handler would raise KeyboardInterrupt
            return
        handler = self.previous.get(self.received)
        self.restore()
        if callable(handler):
            handler(self.received, self.frame)

    def stop(self, latest: Path, where: str) -> None:
        """After ``latest`` is saved: log it, hand the signal on (submitit requeues the job, which
        resumes from ``latest``) and raise Preempted. ``where`` says where the run stopped."""
        received = self.received or signal.SIGTERM
        name = signal.Signals(received).name
        log.info("%s: saved %s at %s and stopped; start the same command again to resume", name, latest, where)
        self.hand_on()
        raise Preempted(f"{name} received: checkpoint {latest} saved at {where}; rerun to resume", received)
