"""Open-call limits per principal, the server's totals, and the loop-lag shedder."""

from __future__ import annotations

import asyncio
import time

import pytest

from provisioner.edge.concurrency import (
    ConcurrencyLimitedError,
    ConcurrencyLimiter,
    ConcurrencyLimits,
    Kind,
    LoopLag,
    OverloadedError,
    kind_for,
)

SERVICE = "/provisioning.v1.ProvisioningService"


def test_methods_hold_what_they_cost() -> None:
    assert kind_for(f"{SERVICE}/WatchProgress") is Kind.STREAM
    assert kind_for(f"{SERVICE}/GetDepartmentHealth") is Kind.HEALTH
    assert kind_for(f"{SERVICE}/GetStatus") is Kind.CALL
    assert kind_for("/grpc.health.v1.Health/Watch") is None


def test_each_principal_has_its_own_limit_and_a_slot_is_released_once() -> None:
    limiter = ConcurrencyLimiter(ConcurrencyLimits(streams=2))
    first, _ = limiter.admit("mallory", Kind.STREAM), limiter.admit("mallory", Kind.STREAM)
    with pytest.raises(ConcurrencyLimitedError) as caught:
        limiter.admit("mallory", Kind.STREAM)
    assert (caught.value.kind, caught.value.limit, caught.value.retry_after) == (Kind.STREAM, 2, 1.0)
    limiter.admit("alice", Kind.STREAM)  # somebody else is unaffected
    first()
    first()  # twice is once
    assert limiter.held("mallory", Kind.STREAM) == 1
    limiter.admit("mallory", Kind.STREAM)


def test_a_health_check_is_a_call_too() -> None:
    limiter = ConcurrencyLimiter(ConcurrencyLimits(calls=3, health=2))
    limiter.admit("mallory", Kind.HEALTH)
    release = limiter.admit("mallory", Kind.HEALTH)
    with pytest.raises(ConcurrencyLimitedError, match="health checks"):
        limiter.admit("mallory", Kind.HEALTH)
    limiter.admit("mallory", Kind.CALL)
    with pytest.raises(ConcurrencyLimitedError, match="too many calls"):
        limiter.admit("mallory", Kind.CALL)
    release()
    assert (limiter.held("mallory", Kind.HEALTH), limiter.held("mallory", Kind.CALL)) == (1, 2)


def test_the_servers_totals_shed_load_for_everyone() -> None:
    limiter = ConcurrencyLimiter(ConcurrencyLimits(total_calls=2, total_streams=1))
    release = limiter.admit("a", Kind.CALL)
    limiter.admit("b", Kind.HEALTH)
    with pytest.raises(OverloadedError, match="2 calls open"):
        limiter.admit("c", Kind.CALL)
    limiter.admit("c", Kind.STREAM)  # streams are counted apart
    with pytest.raises(OverloadedError, match="1 streams open"):
        limiter.admit("d", Kind.STREAM)
    release()
    limiter.admit("c", Kind.CALL)


async def test_a_loop_running_late_sheds_new_calls() -> None:
    lag = LoopLag(interval=0.02)
    limiter = ConcurrencyLimiter(ConcurrencyLimits(lag_threshold=0.1), lag=lag)
    lag.start()
    try:
        await asyncio.sleep(0.1)
        limiter.admit("a", Kind.CALL)()
        for _ in range(3):  # the loop blocked three times running
            time.sleep(0.4)  # noqa: ASYNC251 - blocking the loop is the point
            await asyncio.sleep(0.03)
        assert lag.seconds > 0.1
        with pytest.raises(OverloadedError, match="event loop runs"):
            limiter.admit("a", Kind.CALL)
        # Once the loop keeps time again, calls are let in.
        for _ in range(100):
            await asyncio.sleep(0.02)
            if lag.seconds < 0.1:
                break
        limiter.admit("a", Kind.CALL)()
    finally:
        await lag.stop()


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="streams"):
        ConcurrencyLimits(streams=0)
    with pytest.raises(ValueError, match="lag"):
        ConcurrencyLimits(lag_threshold=0)
