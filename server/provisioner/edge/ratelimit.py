"""Per-principal rate limits for the API."""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smhd])\s*$")


@dataclass(frozen=True, slots=True)
class Rate:
    """At most `count` calls per `period` seconds."""

    count: int
    period: float

    def __str__(self) -> str:
        return f"{self.count}/{self.period:g}s"


def parse_rate(text: str) -> Rate:
    """`10/h`, `600/m`, `5/30s`: a count, a slash, an optional multiplier and a unit."""
    match = _RATE.match(text)
    if not match:
        raise ValueError(f"expected a rate like 10/h or 600/m, got {text!r}")
    count, multiplier, unit = match.groups()
    period = (int(multiplier) if multiplier else 1) * _UNITS[unit]
    if int(count) < 1 or period <= 0:
        raise ValueError(f"a rate needs a positive count and period, got {text!r}")
    return Rate(int(count), period)
