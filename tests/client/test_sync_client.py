"""The blocking SDK against a real server running on a background thread."""

from __future__ import annotations

import uuid

import pytest

from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_client import (
    InvalidArgumentError,
    NotFoundError,
    ProvisioningClient,
    Reconnect,
    RetryPolicy,
    is_terminal,
)
from tests.client.harness import ThreadedServer, spec

FAST = RetryPolicy(max_attempts=20, initial_delay=0.02, max_delay=0.1)


def test_provision_watch_list_and_errors(threaded_server: ThreadedServer) -> None:
    with ProvisioningClient(threaded_server.target, "s3cret") as api:
        job = api.provision(spec("hr"))
        items = list(api.watch(job.job_id))
        assert isinstance(items[0], pb.Job)
        events = [i for i in items[1:] if isinstance(i, pb.JobEvent)]
        assert [e.sequence for e in events] == list(range(1, len(items)))
        assert is_terminal(events[-1])
        assert api.get_status(job.job_id).state == pb.JOB_STATE_COMPLETED
        assert [d.department_id for d in api.list_departments(page_size=1)] == ["hr"]
        with pytest.raises(NotFoundError):
            api.get_status(str(uuid.uuid4()))
        with pytest.raises(InvalidArgumentError) as caught:
            api.deprovision("../x")
        assert [v.field for v in caught.value.violations] == ["department_id"]
    assert set(threaded_server.harness.auth.seen) == {"Bearer s3cret"}


def test_a_sync_watch_resumes_across_a_server_restart(threaded_server: ThreadedServer) -> None:
    notes: list[Reconnect] = []
    with ProvisioningClient(threaded_server.target, reconnect=FAST) as api:
        job = api.provision(spec("slow-sync"))
        events: list[pb.JobEvent] = []
        for item in api.watch(job.job_id, on_reconnect=notes.append):
            if isinstance(item, pb.JobEvent):
                events.append(item)
                if item.sequence == 3:
                    threaded_server.run(threaded_server.harness.restart(down_for=0.3))
        final = api.wait(job.job_id)
    assert notes and notes[0].after_sequence >= 3
    assert [e.sequence for e in events] == list(range(1, final.last_sequence + 1))
    assert final.state == pb.JOB_STATE_COMPLETED


def test_a_silent_sync_stream_is_resumed_by_its_watchdog(threaded_server: ThreadedServer) -> None:
    notes: list[Reconnect] = []
    with ProvisioningClient(threaded_server.target, reconnect=FAST, idle_timeout=0.03) as api:
        job = api.provision(spec("slow-quiet"))
        events = [i for i in api.watch(job.job_id, on_reconnect=notes.append) if isinstance(i, pb.JobEvent)]
    assert any("nothing heard" in n.reason for n in notes)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert is_terminal(events[-1])
