"""Several replicas in one address: calls spread over them, and a replica going away
costs a client nothing but a retry (same idempotency key) or a resumed watch.

The replicas are listeners in front of one engine, as a client sees replicas sharing a
job store; the real multi-replica suite is tests/e2e/test_replicas.py.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_client import AsyncProvisioningClient, ConfigurationError, Reconnect, RetryPolicy
from provisioner_client.config import channel_target, resolve_endpoint
from tests.client.harness import Harness, spec

FAST = RetryPolicy(max_attempts=6, initial_delay=0.02, max_delay=0.1)


def test_several_addresses_become_one_round_robin_target() -> None:
    endpoint = resolve_endpoint("127.0.0.1:1, 127.0.0.2:2", {})
    assert endpoint.addresses == ("127.0.0.1:1", "127.0.0.2:2")
    target, options = channel_target(endpoint)
    assert target == "ipv4:127.0.0.1:1,127.0.0.2:2"
    assert ("grpc.lb_policy_name", "round_robin") in options
    # One name may resolve to several replicas: gRPC's DNS resolver, round-robin.
    named, options = channel_target(resolve_endpoint("replicas.internal:50051", {}))
    assert named == "dns:///replicas.internal:50051"
    assert ("grpc.lb_policy_name", "round_robin") in options
    assert channel_target(resolve_endpoint("127.0.0.1:50051", {}))[0] == "127.0.0.1:50051"
    v6, _ = channel_target(resolve_endpoint("[::1]:1,[::1]:2", {}))
    assert v6 == "ipv6:[::1]:1,[::1]:2"
    tls = resolve_endpoint("grpcs://localhost:1,localhost:2", {})
    assert ("grpc.default_authority", "localhost") in channel_target(tls)[1]


@pytest.mark.parametrize("bad", ["a:1,,b:2", "a:1,b:x", "a b:1", "a:1,"])
def test_a_bad_address_in_the_list_is_named(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="is not a host:port"):
        resolve_endpoint(bad, {})


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    made = Harness(tmp_path)
    await made.start()
    try:
        yield made
    finally:
        await made.close()


async def test_calls_spread_over_the_replicas_and_survive_one_going_away(harness: Harness) -> None:
    recorder, port = await harness.add_replica()
    both = f"{harness.target},127.0.0.1:{port}"
    async with AsyncProvisioningClient(both, token="t", retry=FAST, reconnect=FAST) as api:
        job = await api.provision(spec("slow-hr"))
        for _ in range(20):
            await api.get_status(job.job_id)
        assert len(recorder.seen) >= 5 and len(harness.auth.seen) >= 5  # round-robin

        seen: list[int] = []
        resumed: list[Reconnect] = []

        async def follow() -> None:
            async for item in api.watch(job.job_id, on_reconnect=resumed.append):
                if isinstance(item, pb.JobEvent):
                    seen.append(item.sequence)

        watching = asyncio.create_task(follow())
        # Whichever replica the watch is on goes away while it runs: first one, then
        # (the first back) the other, for good.
        await asyncio.sleep(0.1)
        await harness.stop_serving()
        await asyncio.sleep(0.1)
        await harness.restart(down_for=0)
        await harness.stop_replica(0)
        async with asyncio.timeout(20):
            await watching
        assert resumed  # the watch was cut, and went on elsewhere
        assert seen == list(range(1, seen[-1] + 1))  # every event once, in order

        # With one replica down, every call still lands (on the other).
        for _ in range(5):
            assert (await api.get_status(job.job_id)).state == pb.JOB_STATE_COMPLETED
        again = await api.provision(spec("slow-hr"))
        assert again.job_id == job.job_id


def test_an_address_that_does_not_resolve_is_named() -> None:
    try:
        socket.getaddrinfo("no-such-replica.invalid", 1)
    except OSError:
        pass
    else:  # pragma: no cover - a resolver that answers for .invalid
        pytest.skip("this resolver answers for .invalid names")
    with pytest.raises(ConfigurationError, match="does not resolve"):
        channel_target(resolve_endpoint("127.0.0.1:1,no-such-replica.invalid:2", {}))
