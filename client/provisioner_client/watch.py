"""Following a job across reconnects: which messages to yield, where to resume, when to stop.

Pure bookkeeping shared by both clients; the I/O loops live in `aio` and `sync`.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from provisioner_api.provisioning.v1 import provisioning_pb2 as pb

#: What `watch` yields: the job's snapshot first, then each of its events.
WatchItem = pb.Job | pb.JobEvent

TERMINAL_STATES = frozenset({pb.JOB_STATE_COMPLETED, pb.JOB_STATE_FAILED})
#: Seconds a watch waits, after the terminal event, for the server to close the stream.
END_GRACE = 0.5


def is_terminal(event: pb.JobEvent) -> bool:
    """The last event of every job: JOB_FINISHED, whose state is COMPLETED or FAILED.

    A STATE_CHANGED event to COMPLETED or FAILED comes just before it and is not the end:
    the finishing event is the one that carries the error and the cleanup report.
    """
    return event.type == pb.JOB_EVENT_TYPE_JOB_FINISHED


def is_resumable(code: grpc.StatusCode, details: str | None) -> bool:
    """Whether a watch that failed this way should reconnect rather than give up.

    UNAVAILABLE covers a restart, a draining server, a slow watcher cut off and a dropped
    connection. A proxy that loses its upstream mid-stream resets the HTTP/2 stream,
    which gRPC reports as INTERNAL with RST_STREAM in the details.
    """
    if code == grpc.StatusCode.UNAVAILABLE:
        return True
    return code == grpc.StatusCode.INTERNAL and "RST_STREAM" in (details or "")


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Passed to a watch's `on_reconnect` callback before it waits and reconnects."""

    job_id: str
    #: Consecutive failed connections so far, from 1.
    attempt: int
    #: The stream resumes after this sequence.
    after_sequence: int
    #: Seconds until the next try.
    delay: float
    #: Why the stream ended, in a few words.
    reason: str


class WatchCursor:
    """Where a watch stands: the last sequence seen, and whether the job has ended.

    Each (re)connection sends `request()`; every message received goes through `accept`,
    which drops repeats so the caller sees each event once, in order.
    """

    def __init__(self, job_id: str, after_sequence: int = 0) -> None:
        self.job_id = job_id
        self.last_sequence = max(after_sequence, 0)
        self.done = False
        self._snapshot_seen = False

    def request(self) -> pb.WatchProgressRequest:
        return pb.WatchProgressRequest(job_id=self.job_id, after_sequence=self.last_sequence)

    def accept(self, message: pb.WatchProgressResponse) -> WatchItem | None:
        """What to hand the caller for `message`, if anything; sets `done` at the end."""
        kind = message.WhichOneof("kind")
        if kind == "snapshot":
            job = message.snapshot
            # Resuming after the terminal event (or asked to start past it): the server
            # sends the snapshot and ends the stream with nothing more to say.
            if job.state in TERMINAL_STATES and job.last_sequence <= self.last_sequence:
                self.done = True
            if self._snapshot_seen:
                return None
            self._snapshot_seen = True
            return job
        if kind == "event":
            event = message.event
            if event.sequence <= self.last_sequence:
                return None
            self.last_sequence = event.sequence
            self.done = is_terminal(event)
            return event
        return None
