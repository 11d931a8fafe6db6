"""Stop a training loop at a step boundary when the user (Ctrl-C) or the system (SIGTERM) asks.

A signal that arrives in the middle of a step would leave a checkpoint with the data stream and
the generators already advanced but the step counter not, or an optimiser step applied twice on
resume. Inside :class:`StepBoundary` the first SIGINT or SIGTERM only sets a flag; the loop
checks it after each step (:meth:`StepBoundary.check`), checkpoints, and raises
:class:`TrainingInterrupted`. A second Ctrl-C stops at once (the loop then restores its last step
boundary before checkpointing, see :class:`tl_vpd.trainer.Trainer`).

Signal handlers can only be installed from the main thread; elsewhere (a training thread) the
context does nothing and signals behave as usual.
"""

from __future__ import annotations

import signal
import sys
import threading

__all__ = ["StepBoundary", "TrainingInterrupted"]

_SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None))
                 if s is not None)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped at a step boundary on a signal; the state was checkpointed.

    Attributes:
        signum: the signal (``signal.SIGINT`` or ``signal.SIGTERM``).
        step: the step at which training stopped (every step before it is complete).
        checkpoint: where the state was saved (``None`` without a run directory).
    """

    def __init__(self, msg: str, signum: int, step: int, checkpoint=None):
        super().__init__(msg)
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


class StepBoundary:
    """Context manager deferring SIGINT/SIGTERM to the end of the current step.

    Arguments:
        what: named in the message printed when a signal arrives (e.g. ``"decompose"``).
        quiet: print nothing (other data-parallel ranks).
    """

    def __init__(self, what: str = "training", quiet: bool = False):
        self.what, self.quiet = what, quiet
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for."""
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.signum = signum
        if not self.quiet:
            name = signal.Signals(signum).name
            print(f"\n{name}: stopping {self.what} after this step and saving a checkpoint "
                  "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> StepBoundary:
        if threading.current_thread() is threading.main_thread():
            for s in _SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()

    def request(self, signum: int = signal.SIGINT) -> None:
        """Ask for a stop as a signal would (tests; callbacks that want to end a run cleanly)."""
        self.signum = signum
