"""What one caller can hold of a department service: request threads and SMTP sends are
bounded, and what is over the bound is answered at once (never queued, never recorded)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import httpx

from department_service.httpd import DepartmentHTTPServer
from department_service.routes import MAX_SENDS, Department, Request, Response
from tests.department_service.harness import RunningService
from tests.smtp import MailServer

HIRE = {"name": "Ada", "employee_id": 1}


class _Held:
    """A department whose every request waits until `release` is set."""

    department_id = "hr"

    def __init__(self) -> None:
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()

    def body_limit(self, path: str) -> int:
        return 1024

    def handle(self, request: Request) -> Response:
        self.entered.release()
        self.release.wait(10)
        return Response(200, {"path": request.path})


def test_requests_over_the_in_flight_limit_get_503_at_once_without_a_thread() -> None:
    department = _Held()
    server = DepartmentHTTPServer(("127.0.0.1", 0), cast(Department, department), max_in_flight=2)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    serving.start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(httpx.get, f"{url}/executions", timeout=10) for _ in range(2)]
            for _ in held:
                assert department.entered.acquire(timeout=5)
            threads = threading.active_count()

            # A body on its way, as a caller sends it: the answer still arrives whole.
            body = b"x" * 60_000
            refused = [httpx.post(f"{url}/workflows/email", content=body, timeout=5) for _ in range(5)]

            assert [r.status_code for r in refused] == [503] * 5
            assert refused[0].headers["Retry-After"] == "1"
            assert refused[0].json()["error"]["code"] == "overloaded"
            assert threading.active_count() == threads  # no thread was started for them
            department.release.set()
            assert [f.result().status_code for f in held] == [200, 200]
        assert httpx.get(f"{url}/executions", timeout=5).status_code == 200  # the slots came back
    finally:
        department.release.set()
        server.shutdown()
        server.server_close()


def test_sends_over_the_limit_are_refused_with_429_and_not_recorded(
    service: RunningService, mail_server: MailServer
) -> None:
    mail_server.hold()
    with ThreadPoolExecutor(MAX_SENDS) as pool:
        sending = [pool.submit(service.post, "email", HIRE) for _ in range(MAX_SENDS)]
        mail_server.wait_until_holding(MAX_SENDS)

        refused = service.post("email", HIRE)

        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "1"
        assert refused.json()["error"]["code"] == "mail_busy"
        assert service.directory.rows("SELECT status FROM outbox") == [("pending",)] * MAX_SENDS
        # Other workflows do not wait for the mail.
        assert service.post("database", {"name": "Ada"}).status_code == 200
        mail_server.release()
        assert [f.result().status_code for f in sending] == [200] * MAX_SENDS
    assert service.post("email", HIRE).status_code == 200
    assert service.directory.rows("SELECT count(*) FROM workflow_executions WHERE workflow = 'email'") == [
        (MAX_SENDS + 1,)
    ]
    assert len(mail_server.wait_for(MAX_SENDS + 1)) == MAX_SENDS + 1
