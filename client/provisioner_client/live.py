"""Following a job as it runs: the sinks `provisionctl` feeds each watch item to.

On a terminal, a live rich view: a line per step with its status, attempts, retries and
rollback as they happen, under an overall progress bar with the elapsed time. Elsewhere,
one plain line per event, or one JSON object per line with `-o json`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Protocol, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_client import render
from provisioner_client.watch import Reconnect


class ProgressSink(Protocol):
    """Receives a watch's items in order, and hears of reconnections."""

    def snapshot(self, job: pb.Job) -> None: ...

    def event(self, event: pb.JobEvent) -> None: ...

    def reconnecting(self, note: Reconnect) -> None: ...

    def close(self) -> None: ...


class PlainSink:
    """One line per event on stdout; reconnections noted on stderr."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self._out, self._err = out, err
        self._kind = pb.JOB_KIND_PROVISION

    def snapshot(self, job: pb.Job) -> None:
        self._kind = job.kind
        render.write_lines(self._out, [render.snapshot_line(job)])

    def event(self, event: pb.JobEvent) -> None:
        render.write_lines(self._out, [render.event_line(event, self._kind)])

    def reconnecting(self, note: Reconnect) -> None:
        render.write_lines(self._err, [render.reconnect_line(note)])

    def close(self) -> None:
        pass


class JsonSink:
    """One JSON object per line, shaped like the stream's messages: `{"snapshot": ...}`, `{"event": ...}`."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self._out, self._err = out, err

    def snapshot(self, job: pb.Job) -> None:
        render.write_lines(
            self._out, [render.json_text(pb.WatchProgressResponse(snapshot=job), pretty=False)]
        )

    def event(self, event: pb.JobEvent) -> None:
        render.write_lines(self._out, [render.json_text(pb.WatchProgressResponse(event=event), pretty=False)])

    def reconnecting(self, note: Reconnect) -> None:
        render.write_lines(self._err, [render.reconnect_line(note)])

    def close(self) -> None:
        pass


_STATUS_STYLE = {
    "pending": "dim",
    "running": "cyan",
    "retrying": "yellow",
    "succeeded": "green",
    "failed": "bold red",
    "undoing": "magenta",
    "undone": "magenta",
    "undo failed": "bold red",
    "removing": "magenta",
    "removed": "magenta",
    "remove failed": "bold red",
}
#: A teardown removes what a rollback undoes.
_TEARDOWN = {"undoing": "removing", "undone": "removed", "undo failed": "remove failed"}

_EVENT_STATUS = {
    pb.JOB_EVENT_TYPE_STEP_STARTED: "running",
    pb.JOB_EVENT_TYPE_STEP_RETRYING: "retrying",
    pb.JOB_EVENT_TYPE_STEP_SUCCEEDED: "succeeded",
    pb.JOB_EVENT_TYPE_STEP_FAILED: "failed",
    pb.JOB_EVENT_TYPE_STEP_COMPENSATING: "undoing",
    pb.JOB_EVENT_TYPE_STEP_COMPENSATED: "undone",
    pb.JOB_EVENT_TYPE_STEP_COMPENSATION_FAILED: "undo failed",
}

_SNAPSHOT_STATUS = {
    "compensating": "undoing",
    "compensated": "undone",
}


@dataclass(slots=True)
class StepRow:
    """What the live view shows for one step."""

    name: str
    status: str = "pending"
    attempts: int = 0
    retries: int = 0
    note: str = ""


class StepBoard:
    """The steps' rows, kept up to date from the snapshot and each event (no I/O)."""

    def __init__(self) -> None:
        self.rows: dict[str, StepRow] = {}
        self.state = pb.JOB_STATE_PENDING
        self.progress = 0
        self.title = ""
        self.kind = pb.JOB_KIND_PROVISION
        #: The last sequence shown: an event the snapshot already includes (a watch
        #: replays from the start) must not move the view back.
        self.seen = 0

    @property
    def state_text(self) -> str:
        return render.state_text(self.kind, self.state)

    def _status(self, status: str) -> str:
        return _TEARDOWN.get(status, status) if self.kind == pb.JOB_KIND_DEPROVISION else status

    def snapshot(self, job: pb.Job) -> None:
        self.title = f"{render.kind_name(job.kind)} of {job.department_id}"
        self.kind, self.state, self.progress, self.seen = job.kind, job.state, job.progress, job.last_sequence
        for step in job.steps:
            status = render.step_status_name(step.status)
            self.rows[step.name] = StepRow(
                step.name,
                self._status(_SNAPSHOT_STATUS.get(status, status)),
                step.attempts,
                max(step.attempts - 1, 0),
                step.last_error,
            )

    def event(self, event: pb.JobEvent) -> None:
        if event.sequence <= self.seen:
            return
        self.seen = event.sequence
        self.state, self.progress = event.state, event.progress
        status = _EVENT_STATUS.get(event.type)
        if status is None or not event.step:
            return
        row = self.rows.setdefault(event.step, StepRow(event.step))
        row.status, row.note = self._status(status), event.message
        if event.type == pb.JOB_EVENT_TYPE_STEP_STARTED:
            row.attempts = max(row.attempts, event.attempt)
        elif event.type == pb.JOB_EVENT_TYPE_STEP_RETRYING:
            row.retries += 1

    def table(self) -> Table:
        table = Table(box=None, pad_edge=False, show_edge=False)
        for header, justify in (
            ("step", "left"),
            ("status", "left"),
            ("attempts", "right"),
            ("retries", "right"),
        ):
            table.add_column(header, justify=justify, no_wrap=True)  # type: ignore[arg-type]
        table.add_column("detail", overflow="ellipsis", no_wrap=True)
        for row in self.rows.values():
            table.add_row(
                row.name,
                Text(row.status, style=_STATUS_STYLE.get(row.status, "")),
                str(row.attempts),
                str(row.retries),
                row.note,
            )
        return table


class LiveSink:
    """The rich live view for a terminal; reconnection notes go to stderr, above the view."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._board = StepBoard()
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self._task = self._bar.add_task("PENDING", total=100)
        self._live = Live(self._view(), console=console, refresh_per_second=8, transient=False)
        self._live.start()

    def _view(self) -> Group:
        title = Text(self._board.title, style="bold") if self._board.title else Text("")
        return Group(title, self._board.table(), self._bar)

    def _refresh(self) -> None:
        self._bar.update(self._task, completed=self._board.progress, description=self._board.state_text)
        self._live.update(self._view(), refresh=True)

    def snapshot(self, job: pb.Job) -> None:
        self._board.snapshot(job)
        self._refresh()

    def event(self, event: pb.JobEvent) -> None:
        self._board.event(event)
        self._refresh()

    def reconnecting(self, note: Reconnect) -> None:
        # Looked up now, not at construction: while the view is live, rich swaps in a
        # stderr that prints above the view instead of through it.
        render.write_lines(sys.stderr, [render.reconnect_line(note)])

    def close(self) -> None:
        self._refresh()
        self._live.stop()
