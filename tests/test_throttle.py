"""The login throttle's sliding window, on a clock the test moves (a minute of real waiting proves nothing
more). The HTTP side, 429 with Retry-After on /login, is in test_sessions.py."""

from __future__ import annotations

import pytest

from service.http import throttle as throttle_module
from service.http.throttle import LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_the_window_slides_try_by_try(clock: Clock) -> None:
    throttle = LoginThrottle(limit=10, window_seconds=60, clock=clock)
    for second in range(10):  # one wrong try a second
        clock.now = 1000.0 + second
        throttle.failed("10.0.0.1", "key")
    clock.now = 1009.5
    full = throttle.retry_after("10.0.0.1", "key")
    clock.now = 1060.0  # the first try has left the window, the other nine are still in it
    one_free = throttle.retry_after("10.0.0.1", "key")
    throttle.failed("10.0.0.1", "key")
    full_again = throttle.retry_after("10.0.0.1", "key")
    assert (full, one_free, full_again) == (51, None, 1)  # the second try (at 1001) leaves at 1061


def test_wrong_tries_count_per_address_across_accounts(clock: Clock) -> None:
    throttle = LoginThrottle(limit=10, window_seconds=60, clock=clock)
    for index in range(10):
        throttle.failed("10.0.0.1", f"user{index}")
    assert throttle.retry_after("10.0.0.1", "someone-else") == 60
    assert throttle.retry_after("10.0.0.2", "someone-else") is None
    assert throttle.retry_after("10.0.0.2", "user0") is None  # one wrong try on that account only


def test_nine_wrong_tries_leave_the_door_open(clock: Clock) -> None:
    throttle = LoginThrottle(limit=10, window_seconds=60, clock=clock)
    for _ in range(9):
        throttle.failed("10.0.0.1", "key")
    assert throttle.retry_after("10.0.0.1", "key") is None


def test_a_flood_of_addresses_is_forgotten_rather_than_kept(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(throttle_module, "MAX_TRACKED", 50)
    throttle = LoginThrottle(limit=10, window_seconds=60, clock=clock)
    for index in range(200):
        throttle.failed(f"10.0.{index // 250}.{index % 250}", f"user{index}")
    assert len(throttle._tries) <= 50
