"""A first-come, first-served lock for the model.

`threading.Lock` gives no order: a thread that releases and at once re-acquires it (the
batching scheduler, batch after batch) can win every time, and an attention capture
waiting for the model would starve. This lock hands the model to waiters in the order
they asked. Like `threading.Lock` (and unlike RLock) it may be released by another
thread than the one that took it: the scheduler's dispatcher takes it and the
generation thread releases it when the batch ends.
"""

from __future__ import annotations

import threading
import time


class FairLock:
    """A FIFO lock with the `threading.Lock` interface (acquire/release/locked, `with`)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held = False
        self._next_ticket = 0  # handed to the next thread that asks
        self._serving = 0  # the ticket whose turn it is
        self._abandoned: set[int] = set()  # tickets of waiters that timed out

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        with self._cond:
            if not self._held and self._serving == self._next_ticket:
                self._held = True
                self._next_ticket += 1
                self._serving += 1
                return True
            if not blocking:
                return False
            ticket = self._next_ticket
            self._next_ticket += 1
            deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
            while self._held or self._serving != ticket:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    self._give_up(ticket)
                    return False
                self._cond.wait(left)
            self._held = True
            self._serving += 1
            return True

    def _give_up(self, ticket: int) -> None:
        """A waiter timed out: its ticket must not block the ones behind it."""
        self._abandoned.add(ticket)
        self._skip_abandoned()
        self._cond.notify_all()

    def _skip_abandoned(self) -> None:
        while self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1

    def release(self) -> None:
        with self._cond:
            if not self._held:
                raise RuntimeError("release of an unlocked FairLock")
            self._held = False
            self._skip_abandoned()
            self._cond.notify_all()

    def locked(self) -> bool:
        return self._held

    def waiting(self) -> int:
        """How many threads wait for the lock now (for logs and fairness checks)."""
        with self._cond:
            return self._next_ticket - self._serving - len(self._abandoned)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
