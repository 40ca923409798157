"""The retry rules of the API watch: jittered exponential backoff, Retry-After, and a log that does not flood."""

from __future__ import annotations

import logging
import random

from zpilot.kube.api_calls import Expired, NotServed, _retry_after, status_failure
from zpilot.kube.backoff import MAX_RETRY_AFTER, Backoff, FailureLog


def test_backoff_doubles_to_its_maximum_with_jitter_in_the_upper_half():
    backoff = Backoff(initial=0.5, maximum=30.0, rand=random.Random(7).uniform)
    delays = [backoff.next_delay() for _ in range(12)]
    bounds = [min(30.0, 0.5 * 2 ** i) for i in range(12)]
    assert all(b / 2 <= d <= b for d, b in zip(delays, bounds))
    assert len(set(delays)) == len(delays)  # jittered: no two watchers retry in step
    backoff.reset()
    assert backoff.next_delay() <= 0.5


def test_retry_after_is_a_floor_and_is_bounded():
    backoff = Backoff(initial=0.5, maximum=30.0)
    assert backoff.next_delay(retry_after=7) >= 7
    assert backoff.next_delay(retry_after=10 ** 9) == MAX_RETRY_AFTER


def test_retry_after_header_forms():
    assert _retry_after("3") == 3.0
    assert _retry_after(None) is None and _retry_after("soon") is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: no pause
    assert status_failure(429, "slow down", 4.0).retry_after == 4.0


def test_statuses_become_failures_an_operator_can_act_on():
    assert isinstance(status_failure(410, "too old resource version: 1 (5)"), Expired)
    assert isinstance(status_failure(404, ""), NotServed)
    assert "credentials" in str(status_failure(401, "Unauthorized"))
    assert "RBAC" in str(status_failure(403, 'pods is forbidden: User "x" cannot list resource "pods"'))
    assert str(status_failure(500, "x" * 10_000)).startswith("HTTP 500: x")
    assert len(str(status_failure(500, "x" * 10_000))) <= 500


def test_a_failure_is_logged_once_per_reason_then_reminded_then_recovered(caplog):
    now = [0.0]
    failures = FailureLog(logging.getLogger("test.backoff"), "https://10.0.0.1:443", remind=60.0,
                          clock=lambda: now[0])
    with caplog.at_level(logging.DEBUG, logger="test.backoff"):
        failures.failed("listing pods", "cannot connect: Connection refused", 0.5)
        now[0] = 1.0
        failures.failed("listing pods", "cannot connect: Connection refused", 1.0)
        now[0] = 61.0
        failures.failed("listing pods", "cannot connect: Connection refused", 2.0)
        failures.failed("listing pods", "HTTP 500: boom", 4.0)
        failures.succeeded("listing pods")
        failures.succeeded("listing pods")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "API server https://10.0.0.1:443: listing pods: cannot connect: Connection refused; retrying in 0.50 s",
        "API server https://10.0.0.1:443: listing pods: still failing (3 attempts):"
        " cannot connect: Connection refused; retrying in 2.00 s",
        "API server https://10.0.0.1:443: listing pods: HTTP 500: boom; retrying in 4.00 s",
        "API server https://10.0.0.1:443: listing pods: working again after 4 failed attempts",
    ]
    failures.failed("x", "y" * 5000, None)
    assert len(caplog.records[-1].getMessage()) < 400
