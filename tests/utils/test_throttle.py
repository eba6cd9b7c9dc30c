"""RequestThrottle: spacing and the sliding window, with the clock observed, not asserted on speed."""

from __future__ import annotations

import threading
import time

import pytest

from airflow_provider_smspartner.utils.throttle import RequestThrottle, shared_throttle


def _max_in_window(times: list[float], window: float = 1.0) -> int:
    times = sorted(times)
    return max(sum(1 for t in times if start <= t < start + window) for start in times)


class TestRequestThrottle:
    @pytest.mark.parametrize("threads", [1, 6], ids=["one-thread", "six-threads"])
    def test_never_more_than_rate_in_any_second(self, threads):
        throttle, released = RequestThrottle(rate=40), []
        lock = threading.Lock()

        def worker():
            for _ in range(60 // threads):
                throttle.acquire()
                with lock:
                    released.append(time.monotonic())

        pool = [threading.Thread(target=worker) for _ in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        assert len(released) == 60
        assert _max_in_window(released) <= 40

    def test_late_wakers_cannot_bunch_up(self):
        throttle = RequestThrottle(rate=5)
        # Emulate threads whose reserved slots all passed while they slept (GIL, scheduler): with
        # no spacing left, only the sliding window stands between them and a burst.
        throttle._interval = 0.0
        released = []
        for _ in range(10):
            throttle.acquire()
            released.append(time.monotonic())
        assert _max_in_window(released) <= 5
        assert released[-1] - released[0] >= 1.0

    def test_pause_holds_everyone_back(self):
        throttle = RequestThrottle(rate=1000)
        throttle.pause(0.3)
        started = time.monotonic()
        throttle.acquire()
        assert time.monotonic() - started >= 0.25

    def test_rate_must_be_positive(self):
        with pytest.raises(ValueError, match="rate must be > 0"):
            RequestThrottle(0)

    def test_shared_per_connection_and_rate(self):
        assert shared_throttle("conn_a", 10) is shared_throttle("conn_a", 10)
        assert shared_throttle("conn_a", 10) is not shared_throttle("conn_b", 10)
        assert shared_throttle("conn_a", 10) is not shared_throttle("conn_a", 20)
