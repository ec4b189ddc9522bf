"""Watch resumption against a scripted server that drops, overlaps and ends streams early.

The real server never repeats an event; a scripted one can, to show the client drops
repeats itself and resumes from exactly the last sequence it handed out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import pytest

from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_client import AsyncProvisioningClient, PermissionDeniedError, Reconnect, RetryPolicy

JOB = "00000000-0000-4000-8000-000000000001"
FAST = RetryPolicy(max_attempts=5, initial_delay=0.01, max_delay=0.02)

#: One connection's script: events to send (by sequence), then how the stream ends:
#: None (cleanly) or a status to abort with.
Script = tuple[Sequence[int], tuple[grpc.StatusCode, str] | None]


def event(sequence: int, last: int) -> pb.JobEvent:
    finished = sequence == last
    return pb.JobEvent(
        job_id=JOB,
        sequence=sequence,
        type=pb.JOB_EVENT_TYPE_JOB_FINISHED if finished else pb.JOB_EVENT_TYPE_STEP_STARTED,
        state=pb.JOB_STATE_COMPLETED if finished else pb.JOB_STATE_VALIDATING,
    )


class ScriptedWatch:
    def __init__(self, scripts: list[Script], last: int = 10) -> None:
        self.scripts = scripts
        self.last = last
        self.requests: list[int] = []

    async def watch(
        self, request: pb.WatchProgressRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchProgressResponse]:
        self.requests.append(request.after_sequence)
        sequences, ending = self.scripts[len(self.requests) - 1]
        yield pb.WatchProgressResponse(snapshot=pb.Job(job_id=JOB, state=pb.JOB_STATE_PENDING))
        yield pb.WatchProgressResponse(heartbeat=pb.Heartbeat(last_sequence=request.after_sequence))
        for sequence in sequences:
            yield pb.WatchProgressResponse(event=event(sequence, self.last))
        if ending is not None:
            await context.abort(*ending)


async def run(script: ScriptedWatch, **options: Any) -> tuple[list[pb.Job | pb.JobEvent], list[Reconnect]]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "provisioning.v1.ProvisioningService",
                {
                    "WatchProgress": grpc.unary_stream_rpc_method_handler(
                        script.watch,
                        request_deserializer=pb.WatchProgressRequest.FromString,
                        response_serializer=pb.WatchProgressResponse.SerializeToString,
                    )
                },
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    notes: list[Reconnect] = []
    try:
        async with AsyncProvisioningClient(f"127.0.0.1:{port}", reconnect=FAST, **options) as api:
            items = [i async for i in api.watch(JOB, on_reconnect=notes.append)]
    finally:
        await server.stop(None)
    return items, notes


async def test_overlapping_replays_are_dropped_and_each_resume_starts_after_the_last_seen() -> None:
    script = ScriptedWatch(
        [
            ([1, 2, 3, 4], (grpc.StatusCode.UNAVAILABLE, "server restarting")),
            ([2, 3, 4, 5, 6, 7], None),  # replays 2-4, then ends without the terminal event
            ([7, 8, 9, 10, 11], None),  # 11 comes after the terminal event: never read
        ]
    )
    items, notes = await run(script)
    assert isinstance(items[0], pb.Job)
    assert [i.sequence for i in items[1:]] == list(range(1, 11))  # type: ignore[union-attr]
    assert sum(isinstance(i, pb.Job) for i in items) == 1
    assert script.requests == [0, 4, 7]
    assert [n.after_sequence for n in notes] == [4, 7]
    assert "UNAVAILABLE" in notes[0].reason
    assert "ended before the job" in notes[1].reason


async def test_a_reset_stream_is_resumed() -> None:
    script = ScriptedWatch(
        [
            ([1, 2], (grpc.StatusCode.INTERNAL, "Received RST_STREAM with error code 2")),
            ([3], None),
        ],
        last=3,
    )
    items, notes = await run(script)
    assert [i.sequence for i in items[1:]] == [1, 2, 3]  # type: ignore[union-attr]
    assert len(notes) == 1


async def test_a_refusal_is_raised_at_once_not_retried() -> None:
    script = ScriptedWatch([([1], (grpc.StatusCode.PERMISSION_DENIED, "viewers cannot watch"))])
    with pytest.raises(PermissionDeniedError, match="viewers cannot watch"):
        await run(script)
    assert script.requests == [0]
