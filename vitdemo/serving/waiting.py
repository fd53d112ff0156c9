"""How long a new request would wait, from recent answer times: the message a user gets
instead of a bare "queue is full" when the server cannot take more work."""

from __future__ import annotations

import math
import statistics
import threading
from collections import deque

# Answers kept for the estimate: enough to smooth one batch's spread, few enough to follow
# the load as it changes during a lesson.
RECENT_ANSWERS = 64


class AnswerTimes:
    """Seconds the most recent answers took (start of work to last token); thread-safe."""

    def __init__(self, keep: int = RECENT_ANSWERS) -> None:
        self._times: deque[float] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def record(self, seconds: float) -> None:
        with self._lock:
            self._times.append(float(seconds))

    def typical(self) -> float | None:
        """The median of the recent answers, or None before the first one."""
        with self._lock:
            return statistics.median(self._times) if self._times else None


def estimate_wait_s(waiting: int, slots: int, answer_s: float | None) -> float | None:
    """Seconds until a request that joins now would start: `waiting` requests ahead of it,
    drained `slots` at a time (the requests in progress at once), each taking about `answer_s`
    (Little's law: the queue drains at slots / answer_s answers per second). `answer_s` is a
    request's whole time in progress, its wait for a batch included, so more slots than the
    batch holds do not shorten the estimate wrongly."""
    if answer_s is None:
        return None
    if slots < 1:
        raise ValueError(f"slots={slots} must be >= 1")
    return math.ceil(waiting / slots) * answer_s


def _rounded(seconds: float) -> str:
    """A human figure: 5-second steps under two minutes, then minutes."""
    if seconds < 120:
        return f"{max(5, 5 * math.ceil(seconds / 5))} seconds"
    return f"{math.ceil(seconds / 60)} minutes"


def busy_message(waiting: int, slots: int, answer_s: float | None) -> str:
    """What a refused user reads: how many are ahead and about how long to wait."""
    wait = estimate_wait_s(waiting, slots, answer_s)
    ahead = "1 request is waiting" if waiting == 1 else f"{waiting} requests are waiting"
    if wait is None:
        return f"The server is busy: {ahead} and none has finished yet. Please try again in a minute."
    at_once = "one at a time" if slots == 1 else f"up to {slots} in progress at once"
    return (f"The server is busy: {ahead} (answers take about {answer_s:.1f} s, {at_once}). "
            f"Please try again in about {_rounded(wait)}.")
