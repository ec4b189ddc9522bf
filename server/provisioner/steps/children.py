"""The environment a child process gets: what it needs to run, and nothing of ours.

The control plane's own environment holds its secrets (`PROVISIONER_JWT_SECRET`, the
encryption key, platform tokens, database URLs), and Envoy, the internet-facing process,
or a department's service must never carry them. So children do not inherit it: they get
this short allow-list, plus what their launcher passes on purpose.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

#: Passed on when set: where programs are, the locale, the time zone, the scratch directory.
INHERITED = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    environment = {name: os.environ[name] for name in INHERITED if name in os.environ}
    environment.update(extra or {})
    return environment
