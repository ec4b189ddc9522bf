"""The rules declared in the contract, as enforced at the edge, agree with the core's."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioner.core.errors import FieldViolation, InvalidSpecError
from provisioner.core.spec import DepartmentSpec
from provisioner.core.spec import violations as core_violations
from provisioner.edge.validation import violations
from provisioner_api.provisioning.v1 import provisioning_pb2 as pb

GOOD = pb.ProvisionRequest(
    department_id="hr",
    department_name="Human Resources",
    workflows=["email", "google_drive", "database"],
    data_retention="90d",
    region="us-west",
    admin_email="admin@synrgscaling.com",
)


def fields(request: pb.ProvisionRequest) -> list[str]:
    return [v.field for v in violations(request)]


def test_the_seeds_example_request_is_valid() -> None:
    assert violations(GOOD) == []


def test_every_broken_rule_is_reported_with_its_field() -> None:
    bad = pb.ProvisionRequest(
        department_id="HR", department_name=" ", workflows=["email", "fax", "email"],
        data_retention="0d", region="mars", admin_email="nope", request_id="not-a-uuid",
    )  # fmt: skip
    assert fields(bad) == [
        "department_id", "department_name", "workflows[1]", "workflows[2]", "data_retention", "region",
        "admin_email", "request_id",
    ]  # fmt: skip
    described = {v.field: v.description for v in violations(bad)}
    assert described["department_id"].startswith("must be 2-32 characters")
    assert described["workflows[2]"] == "'email' is listed twice"


def test_a_list_too_long_is_one_violation_and_an_error_lists_ten_at_most() -> None:
    flood = pb.ProvisionRequest()
    flood.CopyFrom(GOOD)
    flood.workflows[:] = ["email"] * 10_000
    assert [(v.field, v.description) for v in violations(flood)] == [
        ("workflows", "must list at most 3 item(s)")
    ]

    error = InvalidSpecError([FieldViolation(f"f{i % 3}", "is wrong") for i in range(300)])
    assert len(error.violations) == InvalidSpecError.MAX_VIOLATIONS
    assert error.message == "invalid request: f0, f1, f2 and 290 more (see the field violations)"


def test_optional_request_ids_may_be_empty_but_not_malformed() -> None:
    ok = pb.ProvisionRequest()
    ok.CopyFrom(GOOD)
    ok.request_id = str(uuid.uuid4())
    assert violations(ok) == []


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (pb.GetStatusRequest(job_id="x"), ["job_id"]),
        (pb.GetStatusRequest(job_id=str(uuid.uuid4())), []),
        (pb.WatchProgressRequest(job_id=str(uuid.uuid4()), after_sequence=-1), []),
        (pb.DeprovisionRequest(department_id="../etc"), ["department_id"]),
        (pb.ListDepartmentsRequest(page_size=501), ["page_size"]),
        (pb.ListDepartmentsRequest(page_size=-1), ["page_size"]),
        (pb.ListDepartmentsRequest(page_size=500), []),
        (pb.GetDepartmentHealthRequest(department_id="a--b"), ["department_id"]),
    ],
)
def test_other_requests(request_: object, expected: list[str]) -> None:
    assert [v.field for v in violations(request_)] == expected  # type: ignore[arg-type]


ids = st.one_of(st.from_regex(r"[a-z][a-z0-9-]{0,33}[a-z0-9]?", fullmatch=True), st.text(max_size=40))
names = st.one_of(st.text(min_size=0, max_size=110), st.sampled_from(["Human Resources", " x", "x ", ""]))
workflow_lists = st.lists(st.sampled_from(["email", "google_drive", "database", "fax", ""]), max_size=4)
retentions = st.one_of(st.from_regex(r"[0-9]{1,5}d", fullmatch=True), st.text(max_size=6))
regions = st.one_of(st.from_regex(r"[a-z]{1,11}(-[a-z0-9]{1,13}){0,3}", fullmatch=True), st.text(max_size=12))
emails = st.one_of(st.emails(), st.text(max_size=30))


@given(ids, names, workflow_lists, retentions, regions, emails)
def test_the_contract_and_the_core_refuse_the_same_fields(
    department_id: str, name: str, workflows: list[str], retention: str, region: str, email: str
) -> None:
    request = pb.ProvisionRequest(
        department_id=department_id, department_name=name, workflows=workflows,
        data_retention=retention, region=region, admin_email=email,
    )  # fmt: skip
    spec = DepartmentSpec(department_id, name, tuple(workflows), retention, region, email)

    def roots(found: list[str]) -> set[str]:
        return {field.split("[")[0] for field in found}

    assert roots(fields(request)) == roots([v.field for v in core_violations(spec)])
