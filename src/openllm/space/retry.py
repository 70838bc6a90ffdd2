"""Retrying what the network may break: exponential backoff with jitter, a bounded number of times.

Only :class:`~openllm.hub.HubUnavailable` is retried (refused, reset, timed out, 5xx); an auth error, a
conflict or a missing repository fails at once, because trying again cannot fix them.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..hub.errors import HubUnavailable

__all__ = ["RetryPolicy", "retry", "GaveUp"]

T = TypeVar("T")


class GaveUp(HubUnavailable):
    """Still unavailable after every attempt."""


@dataclass
class RetryPolicy:
    """``attempts`` tries in all; before try k+1 wait ``min(cap, base * 2**k)`` scaled by a random factor in
    [1 - jitter, 1] (so that many clients retrying at once do not stay in step)."""

    attempts: int = 5
    base: float = 0.5
    cap: float = 20.0
    jitter: float = 0.5
    seed: int | None = None

    @classmethod
    def from_env(cls, **overrides) -> RetryPolicy:
        """OPENLLM_SYNC_RETRIES and OPENLLM_SYNC_BACKOFF (seconds) override the defaults."""
        kw: dict[str, Any] = {}
        if os.environ.get("OPENLLM_SYNC_RETRIES"):
            kw["attempts"] = int(os.environ["OPENLLM_SYNC_RETRIES"])
        if os.environ.get("OPENLLM_SYNC_BACKOFF"):
            kw["base"] = float(os.environ["OPENLLM_SYNC_BACKOFF"])
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)

    def delays(self) -> list[float]:
        rng = random.Random(self.seed)
        return [
            min(self.cap, self.base * 2**k) * (1 - self.jitter * rng.random()) for k in range(max(0, self.attempts - 1))
        ]


def retry(
    fn: Callable[[], T],
    *,
    what: str,
    policy: RetryPolicy | None = None,
    on_retry: Callable[[int, float, Exception], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn`` until it returns, retrying on HubUnavailable per ``policy``; then raise GaveUp."""
    policy = policy or RetryPolicy.from_env()
    delays = policy.delays()
    last: Exception | None = None
    for attempt in range(max(1, policy.attempts)):
        try:
            return fn()
        except HubUnavailable as exc:
            last = exc
            if attempt >= len(delays):
                break
            if on_retry:
                on_retry(attempt + 1, delays[attempt], exc)
            sleep(delays[attempt])
    raise GaveUp(f"{what}: the hub is still unavailable after {policy.attempts} attempts ({last})") from last
