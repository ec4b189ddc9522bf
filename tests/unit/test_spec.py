from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioner.core.errors import InvalidSpecError
from provisioner.core.spec import DEPARTMENT_ID_PATTERN, DepartmentSpec, validate, violations

GOOD = DepartmentSpec("hr", "Human Resources", ("email", "google_drive", "database"), "90d", "us-west",
                      "admin@synrgscaling.com")  # fmt: skip


def fields(spec: DepartmentSpec) -> list[str]:
    return [v.field for v in violations(spec)]


def test_the_seeds_example_request_is_valid() -> None:
    assert validate(GOOD) is GOOD


@pytest.mark.parametrize(
    "department_id",
    [
        "h",
        "HR",
        "1hr",
        "hr-",
        "h--r",
        "h_r",
        "h.r",
        "a" * 33,
        "hr;drop",
        "../etc",
        "hr\n",
        "ｈｒ",
        "admin",
        "",
    ],
)
def test_bad_department_ids_are_refused(department_id: str) -> None:
    assert fields(DepartmentSpec(department_id, "x", ("email",), "90d", "us-west", "a@b.io")) == [
        "department_id"
    ]


@given(st.from_regex(DEPARTMENT_ID_PATTERN, fullmatch=True))
def test_accepted_ids_are_safe_as_schema_file_and_route_names(department_id: str) -> None:
    assert department_id.isascii() and department_id == department_id.lower()
    assert not set(department_id) & set("/\\.'\";_ \t\n")
    assert 2 <= len(department_id) <= 32


def test_every_violation_is_reported_at_once() -> None:
    spec = DepartmentSpec("HR", " ", ("email", "fax", "email"), "0d", "mars", "nope")
    assert fields(spec) == [
        "department_id", "department_name", "workflows[1]", "workflows[2]", "data_retention", "region",
        "admin_email",
    ]  # fmt: skip
    with pytest.raises(InvalidSpecError) as caught:
        validate(spec)
    assert len(caught.value.violations) == 7


@pytest.mark.parametrize("name", ["", "   ", "x" * 101, "bad\x00name", " padded", "tab\tname"])
def test_bad_names(name: str) -> None:
    assert fields(DepartmentSpec("hr", name, ("email",), "90d", "us-west", "a@b.io")) == ["department_name"]


@pytest.mark.parametrize("retention", ["", "90", "d", "0d", "90D", "3651d", "-1d", "1.5d", "90 d"])
def test_bad_retention(retention: str) -> None:
    assert fields(DepartmentSpec("hr", "x", ("email",), retention, "us-west", "a@b.io")) == ["data_retention"]


def test_workflows_must_not_be_empty() -> None:
    assert fields(DepartmentSpec("hr", "x", (), "90d", "us-west", "a@b.io")) == ["workflows"]


def test_fingerprint_tells_specs_apart_and_round_trips() -> None:
    other = DepartmentSpec.from_dict({**GOOD.to_dict(), "region": "eu-west"})
    assert DepartmentSpec.from_dict(GOOD.to_dict()) == GOOD
    assert GOOD.fingerprint() == DepartmentSpec.from_dict(GOOD.to_dict()).fingerprint()
    assert GOOD.fingerprint() != other.fingerprint()
