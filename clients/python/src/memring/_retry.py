"""When to send a request again, and how long to wait first.

429 and 503 answers carry ``Retry-After``; the client waits at least that long, and otherwise
backs off exponentially with full jitter (a random wait between 0 and ``base_delay * 2**n``,
capped at ``max_delay``). It gives up after ``max_attempts`` tries or when the next wait would
end past ``max_elapsed`` seconds from the first try, and raises the last error.

It never repeats a change that may have been applied unless repeating it is harmless: the
request says so with ``retry_safe`` (see ``_requests.py``: writes carry an id chosen before the
first try, conditional changes an ``Idempotency-Key``). A 429 is answered before the server
does anything, and a refused connection before anything was sent, so both are always safe.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ._errors import MemringError, TransportError

__all__ = ["RetryPolicy"]

RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    """How many times and for how long a request is tried.

    ``RetryPolicy(max_attempts=1)`` turns retries off.
    """

    max_attempts: int = 5
    """Tries in all, the first included."""
    max_elapsed: float = 60.0
    """Seconds from the first try after which no new try starts."""
    base_delay: float = 0.25
    """The first backoff's ceiling, in seconds; it doubles with each retry."""
    max_delay: float = 20.0
    """The highest backoff ceiling, in seconds (a ``Retry-After`` may ask for more)."""
    retry_transport_errors: bool = True
    """Retry refused connections and, for safe requests, broken ones and timeouts."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.max_elapsed < 0 or self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("delays must not be negative")

    def backoff(self, retry: int, retry_after: float | None, rng: random.Random) -> float:
        """The wait before retry number ``retry`` (0 for the first retry)."""
        ceiling = min(self.max_delay, self.base_delay * (2.0 ** min(retry, 60)))
        wait = rng.uniform(0.0, ceiling)
        if retry_after is not None:
            wait = max(wait, retry_after)
        return wait

    def should_retry(self, error: MemringError, *, retry_safe: bool, sent: bool) -> bool:
        """Whether ``error`` may be retried at all (the budget aside).

        ``sent``: the request may have reached the server (False only for a refused or
        timed-out connection attempt).
        """
        if isinstance(error, TransportError):
            return self.retry_transport_errors and (retry_safe or not sent)
        if error.status == 429:
            return True
        return error.status in RETRY_STATUSES and retry_safe


class Attempts:
    """The retry state of one logical call."""

    def __init__(self, policy: RetryPolicy, started: float, rng: random.Random) -> None:
        self.policy = policy
        self.started = started
        self.rng = rng
        self.tries = 0
        self.ambiguous = False
        """An earlier try may have been applied (its answer was lost or was a 503)."""

    def next_wait(
        self, error: MemringError, *, retry_safe: bool, sent: bool, now: float
    ) -> float | None:
        """Seconds to wait before the next try, or ``None`` to give up and raise ``error``."""
        policy = self.policy
        if self.tries >= policy.max_attempts:
            return None
        if not policy.should_retry(error, retry_safe=retry_safe, sent=sent):
            return None
        wait = policy.backoff(self.tries - 1, error.retry_after, self.rng)
        if now + wait - self.started > policy.max_elapsed:
            return None
        if sent and error.status != 429:
            self.ambiguous = True
        return wait
