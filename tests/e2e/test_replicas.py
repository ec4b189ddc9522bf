"""Three replicas on one PostgreSQL, as a platform team runs them: the store is the truth.

The replicas run the production profile (PostgreSQL for departments and jobs, the
Railway fake whose deployments really run, the n8n fake), with their steps slowed so
that each can be killed mid-step. Thirty departments are asked of any replica through
the SDK given all three addresses; one replica is SIGKILLed while each of the seven
steps runs, once during a rollback and once during a teardown, and comes back only after
its leases expired, so another replica takes its jobs over. Afterwards every job is
finished with a true report, and PostgreSQL, Railway, n8n and every replica's Envoy hold
exactly the completed departments; every watcher saw every event of its job once, in
order.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_client import ApiError, DepartmentSpec, ProvisioningClient, RetryPolicy
from tests.e2e.balancer import Balancer
from tests.e2e.conftest import (
    ControlPlane,
    control_plane,
    department_services,
    stop_department_services,
    token,
)
from tests.e2e.platform import LocalPlatform
from tests.e2e.test_departments import through_envoy
from tests.e2e.test_tenant_database import in_postgres
from tests.integration.fake_n8n import KEY, FakeN8n, serving
from tests.integration.fake_railway import FakeRailway

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

TOKEN, PROJECT, ENVIRONMENT = "railway-test-token-0123456789", "project-1", "environment-1"
STEPS = ("validate", "database", "oauth", "container", "workflows", "gateway", "validation")
LEASE = 2.0
PATIENT = RetryPolicy(max_attempts=20, initial_delay=0.1, max_delay=1.0)


def spec(department_id: str) -> DepartmentSpec:
    return DepartmentSpec(
        department_id, "Operations", ("email", "database"), "90d", "eu-west", "ops@example.com"
    )


@dataclass
class Cluster:
    replicas: list[ControlPlane]
    railway: FakeRailway
    n8n: FakeN8n
    platform: LocalPlatform
    #: Events each watcher saw, by job id.
    seen: dict[str, list[int]] = field(default_factory=dict)
    watchers: list[threading.Thread] = field(default_factory=list)

    @property
    def addresses(self) -> str:
        return ",".join(r.grpc_target for r in self.replicas)

    def client(self, target: str | None = None) -> ProvisioningClient:
        return ProvisioningClient(target or self.addresses, token(), retry=PATIENT, reconnect=PATIENT)

    def rows(self, sql: str) -> list[tuple[object, ...]]:
        return self.replicas[0].query(sql)

    def watch(self, job_id: str) -> None:
        """Follow a job through the SDK with all three addresses, in a thread."""
        seen = self.seen.setdefault(job_id, [])

        def follow() -> None:
            with self.client() as api:
                for item in api.watch(job_id):
                    if isinstance(item, pb.JobEvent):
                        seen.append(item.sequence)

        thread = threading.Thread(target=follow, daemon=True, name=f"watch-{job_id}")
        thread.start()
        self.watchers.append(thread)

    def replica_named(self, replica_id: str) -> ControlPlane:
        return next(
            r for r in self.replicas if (r.state_dir / "replica-id").read_text().strip() == replica_id
        )

    def kill_when(self, what: str, sql: str, patience: float = 60) -> str:
        """SIGKILL the replica that holds the lease of the first job `sql` finds (it must
        select one lease owner), and bring it back once its leases have expired."""
        deadline = time.monotonic() + patience
        while True:
            found = self.rows(sql)
            if found and found[0][0]:
                break
            assert time.monotonic() < deadline, f"never saw {what}"
            time.sleep(0.02)
        victim = self.replica_named(str(found[0][0]))
        victim.stop(signal.SIGKILL)
        time.sleep(LEASE + 0.5)  # another replica takes its jobs over meanwhile
        victim.start()
        return str(found[0][0])


@contextlib.contextmanager
def cluster_of(
    root: Path, postgres_url: str, admin_url: str, count: int = 3, *, production: bool = True, **extra: str
) -> Iterator[Cluster]:
    """`count` replicas on one job store; with `production`, on every production adapter."""
    key = base64.b64encode(os.urandom(32)).decode()
    with ExitStack() as stack:
        platform = LocalPlatform(root / "platform")
        stack.callback(platform.close)
        railway = stack.enter_context(FakeRailway(TOKEN, PROJECT, ENVIRONMENT, runtime=platform))
        n8n = FakeN8n()
        n8n_url = stack.enter_context(serving(n8n))
        adapters = {
            "PROVISIONER_TENANT_DATABASE_URL": admin_url,
            "PROVISIONER_RAILWAY_TOKEN": TOKEN,
            "PROVISIONER_RAILWAY_PROJECT_ID": PROJECT,
            "PROVISIONER_RAILWAY_ENVIRONMENT_ID": ENVIRONMENT,
            "PROVISIONER_RAILWAY_IMAGE": "ghcr.io/example/department-service:test",
            "PROVISIONER_RAILWAY_ENDPOINT": railway.url,
            "PROVISIONER_N8N_URL": n8n_url,
            "PROVISIONER_N8N_API_KEY": KEY,
            "PROVISIONER_UPSTREAM_CA_FILE": str(platform.ca_file),
        }
        # One address in front of every replica's REST listener, as production has: the
        # departments' token issuer, whose keys services fetch whichever replica is down.
        balancer = stack.enter_context(Balancer().running())
        replicas = []
        for index in range(count):
            (root / f"r{index}").mkdir()
            plane = control_plane(
                root / f"r{index}",
                PROVISIONER_DATABASE_URL=postgres_url,
                PROVISIONER_ENCRYPTION_KEY=key,
                PROVISIONER_LEASE_SECONDS=str(LEASE),
                PROVISIONER_CLAIM_INTERVAL="0.2",
                PROVISIONER_RETRY_BASE_SECONDS="0.1",
                PROVISIONER_OAUTH_ISSUER=balancer.url,
                **(adapters if production else {}),
                **extra,
            )
            balancer.add(plane.rest_url)
            stack.callback(lambda p=plane: p.process is not None and p.stop(signal.SIGKILL))
            plane.start()
            replicas.append(plane)
        yield Cluster(replicas, railway, n8n, platform)


def wait_finished(cluster: Cluster, job_ids: list[str], patience: float = 120) -> dict[str, pb.Job]:
    deadline = time.monotonic() + patience
    with cluster.client() as api:
        while True:
            jobs = {job_id: api.get_status(job_id) for job_id in job_ids}
            if all(j.state in (pb.JOB_STATE_COMPLETED, pb.JOB_STATE_FAILED) for j in jobs.values()):
                return jobs
            assert time.monotonic() < deadline, {j: pb.JobState.Name(x.state) for j, x in jobs.items()}
            time.sleep(0.2)


def running_step(step: str, departments: list[str]) -> str:
    names = ", ".join(f"'{d}'" for d in departments)
    return (
        "SELECT j.lease_owner FROM jobs j JOIN job_steps s ON s.job_id = j.job_id "
        f"WHERE s.name = '{step}' AND s.status = 'running' AND j.finished_at IS NULL "
        f"AND j.department_id IN ({names}) LIMIT 1"
    )


def test_three_replicas_lose_one_in_every_step_and_keep_every_promise(
    postgres_url: str, admin_url: str, tmp_path: Path
) -> None:
    doomed = f"doomed-{uuid.uuid4().hex[:4]}"
    with cluster_of(
        tmp_path,
        postgres_url,
        admin_url,
        PROVISIONER_STEP_DELAY="0.3",
        PROVISIONER_FAULT_INJECTION=f"validation=fail@{doomed}",
        PROVISIONER_MAX_RETRIES="0",
    ) as cluster:
        jobs: dict[str, str] = {}
        killed: list[str] = []

        def wave(names: list[str]) -> None:
            with cluster.client() as api:
                for name in names:
                    job = api.provision(spec(name))
                    jobs[name] = job.job_id
                    cluster.watch(job.job_id)

        # In each step: a wave of departments asked of any replica, and the replica
        # running one of them through that step killed.
        for step in STEPS:
            names = [f"{step[:5]}-{i}-{uuid.uuid4().hex[:4]}" for i in range(4)]
            wave(names)
            killed.append(cluster.kill_when(f"{step} running", running_step(step, names)))

        # During a rollback: the doomed department fails its validation and is undone.
        wave([doomed, f"more-{uuid.uuid4().hex[:4]}"])
        killed.append(
            cluster.kill_when(
                "a rollback",
                "SELECT j.lease_owner FROM jobs j JOIN job_steps s ON s.job_id = j.job_id "
                f"WHERE j.department_id = '{doomed}' AND j.state = 'ROLLING_BACK' "
                "AND s.status = 'compensated' LIMIT 1",
            )
        )
        finished = wait_finished(cluster, list(jobs.values()))

        # During a teardown, asked of any replica.
        gone = next(n for n in jobs if n.startswith("datab"))
        with cluster.client() as api:
            teardown = api.deprovision(gone)
        cluster.watch(teardown.job_id)
        killed.append(
            cluster.kill_when(
                "a teardown",
                "SELECT j.lease_owner FROM jobs j JOIN job_steps s ON s.job_id = j.job_id "
                f"WHERE j.job_id = '{teardown.job_id}' AND s.status = 'compensating' LIMIT 1",
            )
        )
        finished |= wait_finished(cluster, [teardown.job_id])
        for thread in cluster.watchers:
            thread.join(timeout=60)

        assert len(killed) == 9
        # Every job finished; only the doomed one failed, and its report is clean.
        for job in finished.values():
            if job.department_id == doomed:
                assert job.state == pb.JOB_STATE_FAILED and not job.cleanup.remaining, job
            else:
                assert job.state == pb.JOB_STATE_COMPLETED, (job.department_id, job.error)
        # Every watcher saw every event of its job once, in order, whoever served it.
        for job_id, job in finished.items():
            assert cluster.seen[job_id] == list(range(1, job.last_sequence + 1)), job.department_id

        living = set(jobs) - {doomed, gone}
        # Exactly the completed departments exist, in every system.
        assert {s.name for s in cluster.railway.services.values()} == {f"dept-{d}" for d in living}
        assert sorted(cluster.platform.running()) == sorted(f"dept-{d}" for d in living)
        assert {w["name"].rsplit("-", 1)[0] for w in cluster.n8n.workflows.values()} == {
            f"dept-{d}" for d in living
        }
        schemas = {
            str(s) for (s,) in cluster.rows("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'dept_%'")
        }
        assert schemas == {"dept_" + d.replace("-", "_") for d in living}
        assert cluster.replicas[0].routes() == living
        assert not asyncio.run(in_postgres(admin_url, doomed)) and not asyncio.run(
            in_postgres(admin_url, gone)
        )
        # Every replica's Envoy routes every living department, and nothing else.
        for replica in cluster.replicas:
            for department in living:
                assert through_envoy(replica, department, "healthz").status_code == 200
            for department in (doomed, gone):
                assert through_envoy(replica, department, "healthz").status_code == 404


def test_torn_down_and_made_again_through_other_replicas_with_nothing_twice(
    postgres_url: str, admin_url: str, tmp_path: Path
) -> None:
    with cluster_of(tmp_path, postgres_url, admin_url) as cluster:
        one, two, three = (r.grpc_target for r in cluster.replicas)
        name = f"again-{uuid.uuid4().hex[:4]}"
        with cluster.client(one) as api:
            first = api.wait(api.provision(spec(name)).job_id)
        assert first.state == pb.JOB_STATE_COMPLETED, first.error
        # Each replica's Envoy serves it within a second of the route being made.
        for replica in cluster.replicas:
            assert eventually(lambda r=replica: through_envoy(r, name, "healthz").status_code == 200)

        with cluster.client(two) as api:
            down = api.wait(api.deprovision(name).job_id)
        assert down.state == pb.JOB_STATE_COMPLETED, down.error
        assert cluster.railway.service_named(f"dept-{name}") is None and cluster.platform.running() == []
        assert cluster.n8n.of(name) == [] and asyncio.run(in_postgres(admin_url, name)) == {}
        for replica in cluster.replicas:
            assert eventually(lambda r=replica: through_envoy(r, name, "healthz").status_code == 404)

        with cluster.client(three) as api:
            again = api.wait(api.provision(spec(name)).job_id)
        assert again.state == pb.JOB_STATE_COMPLETED, again.error
        assert [s.name for s in cluster.railway.services.values()] == [f"dept-{name}"]
        assert cluster.platform.running() == [f"dept-{name}"]
        assert len(cluster.n8n.of(name)) == 2
        # One client and one role password: the first deployment's are gone.
        names = cluster.rows(f"SELECT name FROM department_secrets WHERE department_id = '{name}' ORDER BY 1")
        assert names == [("active",), ("database",)]

        # A replica given another encryption key cannot open these secrets: it refuses to start.
        (tmp_path / "stranger").mkdir()
        stranger = control_plane(
            tmp_path / "stranger",
            **{
                **{k: v for k, v in cluster.replicas[0].env.items() if k.startswith("PROVISIONER_")},
                "PROVISIONER_STATE_DIR": str(tmp_path / "stranger" / "var"),
                "PROVISIONER_ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode(),
            },
        )
        stranger.start(expect_ready=False)
        assert stranger.process is not None and stranger.process.wait(timeout=30) == 1
        assert "same PROVISIONER_ENCRYPTION_KEY" in stranger.log.read_text()


def test_rate_limit_and_quota_are_exact_across_replicas(
    postgres_url: str, admin_url: str, tmp_path: Path
) -> None:
    with (
        cluster_of(
            tmp_path,
            postgres_url,
            admin_url,
            production=False,
            PROVISIONER_STEPS="noop",
            PROVISIONER_RATE_LIMIT_PROVISION="5/h",
            PROVISIONER_MAX_DEPARTMENTS="4",
        ) as cluster,
        cluster.client() as api,
    ):
        # One principal, twelve provisionings at once over all three replicas: the rate
        # admits exactly five, and of those the quota exactly four.
        outcomes = parallel([lambda i=i: api.provision(spec(f"limit-{i}")) for i in range(12)])
    reasons = sorted(o.reason if isinstance(o, ApiError) else "CREATED" for o in outcomes)
    assert reasons == ["CREATED"] * 4 + ["QUOTA_EXCEEDED"] + ["RATE_LIMITED"] * 7, outcomes


def eventually(check: Callable[[], bool], within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def parallel(calls: list[Callable[[], object]]) -> list[object]:
    results: list[object] = [None] * len(calls)

    def run(index: int) -> None:
        try:
            results[index] = calls[index]()
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_embedded_departments_stay_with_their_replica_and_never_report_a_false_teardown(
    postgres_url: str, admin_url: str, tmp_path: Path
) -> None:
    """The embedded steps keep a department on the machine that made it: asked of another
    replica, its jobs wait for that one rather than report what they cannot do."""
    with cluster_of(tmp_path, postgres_url, admin_url, count=2, production=False) as cluster:
        home, other = cluster.replicas
        try:
            name = f"local-{uuid.uuid4().hex[:4]}"
            with cluster.client(other.grpc_target) as api:  # asked of one, made by it
                made = api.wait(api.provision(spec(name)).job_id)
            assert made.state == pb.JOB_STATE_COMPLETED, made.error
            service = department_services(other.state_dir)[name]
            home, other = other, home

            home.stop(signal.SIGKILL)
            # Only its home can look at it: elsewhere every check would fail.
            once = RetryPolicy(max_attempts=1)
            with (
                ProvisioningClient(other.grpc_target, token(), retry=once) as api,
                pytest.raises(ApiError) as elsewhere,
            ):
                api.get_department_health(name)
            assert elsewhere.value.reason == "ON_ANOTHER_REPLICA"
            with cluster.client(other.grpc_target) as api:
                teardown = api.deprovision(name)
                time.sleep(LEASE + 1)  # long past any lease: nobody else may take it
                assert api.get_status(teardown.job_id).state == pb.JOB_STATE_PENDING
            assert department_services(home.state_dir) == {name: service}  # untouched

            home.start()
            with cluster.client(other.grpc_target) as api:
                done = api.wait(teardown.job_id)
            assert done.state == pb.JOB_STATE_COMPLETED, done.error
            assert department_services(home.state_dir) == {}
            assert not (home.state_dir / "departments" / name).exists()
        finally:
            for replica in cluster.replicas:
                stop_department_services(replica.state_dir)
