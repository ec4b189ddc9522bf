"""What a job's committed events tell the outside world, as webhook messages.

Three event types, named in the external contract: `job.completed`, `job.failed` and
`department.needs_attention`. A message's id is derived from the job, the event's
sequence and the type, so the same fact always has the same `webhook-id` and a receiver
can deduplicate on it. The body follows the Standard Webhooks shape (`type`,
`timestamp`, `data`) and names steps and outcomes only: never a resource's location, a
secret or a principal.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from provisioner.core.department import department_status
from provisioner.core.job import Event, EventType, Job
from provisioner.core.states import DepartmentStatus, State

JOB_COMPLETED = "job.completed"
JOB_FAILED = "job.failed"
NEEDS_ATTENTION = "department.needs_attention"
EVENT_TYPES = (JOB_COMPLETED, JOB_FAILED, NEEDS_ATTENTION)

_IDS = uuid.UUID("5b0c6a57-54c3-4c38-9d0a-0d7e4b1bd6f1")


@dataclass(frozen=True, slots=True)
class Notification:
    message_id: str
    type: str
    department_id: str
    job_id: str
    created_at: datetime
    #: The exact body sent, every attempt: JSON text.
    body: str


def notifications(job: Job, events: Sequence[Event]) -> list[Notification]:
    """The messages `events`, just committed for `job` (as it is after them), call for."""
    finished = next((e for e in events if e.type is EventType.JOB_FINISHED), None)
    if finished is None:
        return []
    types = [JOB_COMPLETED if job.state is State.COMPLETED else JOB_FAILED]
    status = department_status(job)
    if status is DepartmentStatus.NEEDS_ATTENTION:
        types.append(NEEDS_ATTENTION)
    data: dict[str, Any] = {
        "job_id": job.job_id,
        "department_id": job.department_id,
        "kind": job.kind.value,
        "state": job.state.value.lower(),
        "department_status": status.value,
        "created_at": job.created_at.isoformat(),
        "finished_at": finished.at.isoformat(),
    }
    if job.error is not None:
        data["error"] = {"reason": job.error.reason, "message": job.error.message, "step": job.error.step}
    if job.cleanup is not None:
        data["cleanup"] = {
            "compensated": [s.value for s in job.cleanup.compensated],
            "remaining": sorted(s.value for s in job.cleanup.remaining),
        }
    return [
        Notification(
            message_id="msg_" + uuid.uuid5(_IDS, f"{job.job_id}/{finished.sequence}/{kind}").hex,
            type=kind,
            department_id=job.department_id,
            job_id=job.job_id,
            created_at=finished.at,
            body=json.dumps(
                {"type": kind, "timestamp": finished.at.isoformat(), "data": data},
                separators=(",", ":"),
                default=str,
            ),
        )
        for kind in types
    ]
