"""Rate limits: exact sliding windows per principal, their memory, and windows shared in a store."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from provisioner.edge import context as caller
from provisioner.edge.errors import status_for, trailers_for
from provisioner.edge.ratelimit import (
    Rate,
    RateLimitedError,
    RateLimiter,
    SlidingWindow,
    bucket_for,
    parse_rate,
)
from provisioner.store.memory import InMemoryAdmissions

T = 1_800_000_000.0
SERVICE = "/provisioning.v1.ProvisioningService"


def test_exact_counts_and_the_exact_wait() -> None:
    window = SlidingWindow(Rate(3, 10.0))
    assert [window.admit("alice", T + t) for t in (0.0, 1.0, 2.5)] == [None, None, None]
    # Full until the admission at T leaves the window, at T + 10.
    assert window.admit("alice", T + 3.0) == pytest.approx(7.0)
    assert window.admit("alice", T + 9.999) == pytest.approx(0.001, abs=1e-6)
    assert window.admit("alice", T + 10.0) is None
    # Refusals are not admissions: the next opening is the admission at T + 1 leaving.
    assert window.admit("alice", T + 10.5) == pytest.approx(0.5)
    assert window.admit("alice", T + 11.0) is None


def test_the_window_slides_rather_than_resetting() -> None:
    window = SlidingWindow(Rate(2, 60.0))
    assert window.admit("alice", T) is None
    assert window.admit("alice", T + 59) is None
    # A fixed window would have reset at T + 60; a sliding one still holds T + 59.
    assert window.admit("alice", T + 60) is None
    assert window.admit("alice", T + 61) == pytest.approx(58.0)


def test_principals_do_not_share_a_window() -> None:
    window = SlidingWindow(Rate(1, 3600.0))
    assert window.admit("alice", T) is None
    assert window.admit("alice", T + 1) is not None
    assert window.admit("bob", T + 1) is None


def test_memory_follows_the_active_callers() -> None:
    window = SlidingWindow(Rate(5, 60.0))
    for i in range(1000):
        window.admit(f"caller-{i}", T + i * 0.01)
    assert len(window) == 1000
    # A period later, whoever has not called since is forgotten.
    window.admit("alice", T + 70)
    assert len(window) == 1
    for _ in range(50):
        window.admit("alice", T + 71)
    assert len(window._log["alice"]) == 5


@pytest.mark.parametrize("shared", [None, InMemoryAdmissions()], ids=["memory", "shared"])
async def test_the_limiter_raises_with_bucket_rate_and_wait(shared: InMemoryAdmissions | None) -> None:
    limiter = RateLimiter(
        provision=Rate(1, 3600.0), deprovision=Rate(1, 3600.0), read=Rate(2, 60.0), shared=shared
    )
    await limiter.acquire("alice", "provision", T)
    await limiter.acquire("alice", "deprovision", T)
    await limiter.acquire("alice", "read", T)
    with pytest.raises(RateLimitedError) as caught:
        await limiter.acquire("alice", "provision", T + 100)
    error = caught.value
    assert (error.bucket, error.rate, error.retry_after) == ("provision", Rate(1, 3600.0), 3500.0)
    assert error.retryable
    assert error.message == (
        "rate limit for provision calls reached (1 per 3600 s, PROVISIONER_RATE_LIMIT_PROVISION); "
        "retry in 3500 s"
    )


@pytest.mark.parametrize(
    ("method", "bucket"),
    [
        (f"{SERVICE}/Provision", "provision"),
        (f"{SERVICE}/Deprovision", "deprovision"),
        (f"{SERVICE}/GetStatus", "read"),
        (f"{SERVICE}/WatchProgress", "read"),
        (f"{SERVICE}/ListDepartments", "read"),
        ("/grpc.health.v1.Health/Check", None),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", None),
    ],
)
def test_buckets_by_method(method: str, bucket: str | None) -> None:
    assert bucket_for(method) == bucket


def test_rates_parse_from_settings_text() -> None:
    assert parse_rate("10/h") == Rate(10, 3600.0)
    assert parse_rate("5/30s") == Rate(5, 30.0)
    for bad in ("0/h", "ten/h", "10/w", "10"):
        with pytest.raises(ValueError, match="rate"):
            parse_rate(bad)


def test_a_rate_limited_status_carries_retry_info_and_a_retry_after_trailer() -> None:
    status = status_for(RateLimitedError("provision", Rate(10, 3600.0), 41.2))
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    found = {d.TypeName(): d for d in status.details}
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    found["google.rpc.ErrorInfo"].Unpack(info)
    found["google.rpc.RetryInfo"].Unpack(retry)
    assert info.reason == "RATE_LIMITED"
    assert dict(info.metadata) == {"bucket": "provision", "limit": "10", "period_seconds": "3600"}
    assert retry.retry_delay.ToMilliseconds() == 41200
    token = caller.request_id.set("req-1")
    try:
        assert trailers_for(status) == (("retry-after", "42"), ("x-request-id", "req-1"))
    finally:
        caller.request_id.reset(token)
    assert trailers_for(status_for(RateLimitedError("read", Rate(1, 1.0), 0.001))) == (("retry-after", "1"),)


async def test_limiters_sharing_a_store_admit_the_rate_together_and_reads_each_their_own() -> None:
    shared = InMemoryAdmissions()
    replicas = [
        RateLimiter(provision=Rate(3, 3600.0), deprovision=Rate(3, 3600.0), read=Rate(1, 60.0), shared=shared)
        for _ in range(2)
    ]
    for i in range(3):
        await replicas[i % 2].acquire("alice", "provision", T + i)
    for i in range(3, 10):
        with pytest.raises(RateLimitedError) as refused:
            await replicas[i % 2].acquire("alice", "provision", T + i)
        assert refused.value.retry_after == pytest.approx(3600 - i)
    assert shared.times == {("provision", "alice"): [T, T + 1, T + 2]}
    for replica in replicas:  # reads stay in each replica's memory
        await replica.acquire("alice", "read", T)
