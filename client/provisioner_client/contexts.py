"""`provisionctl`'s contexts: named servers, with how to get a token and which CA to trust,
in a YAML file, so that switching clusters is `provisionctl config use-context NAME`
rather than a handful of `export`s (as kubectl does).

The file is `$PROVISIONER_CONFIG`, else `~/.config/provisionctl/config.yaml`:

    current-context: dev
    contexts:
      dev:
        server: 127.0.0.1:50051
        token-command: .venv/bin/provisionctl token --role admin
      prod:
        server: https://provisioner.internal:443
        token-command: vault read -field=token secret/provisioner
        ca-file: /etc/ssl/internal-ca.pem

A context fills in only what flags and `PROVISIONER_*` variables leave unset. It stores no
token, only the command that prints one (run without a shell, for at most 10 s), so the
file holds no secret; it is still written with mode 0600.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from provisioner_client.errors import ConfigurationError

CONFIG_ENV = "PROVISIONER_CONFIG"
KEYS = ("server", "token-command", "ca-file")
_TOKEN_COMMAND_TIMEOUT = 10.0


def config_path(env: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if env is None else env
    given = environ.get(CONFIG_ENV, "").strip()
    return Path(given) if given else Path.home() / ".config" / "provisionctl" / "config.yaml"


@dataclass
class Config:
    path: Path
    current: str
    contexts: dict[str, dict[str, str]]

    @classmethod
    def load(cls, path: Path) -> Config:
        if not path.exists():
            return cls(path, "", {})
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigurationError(f"cannot read the config file {path}: {exc}") from None
        contexts = document.get("contexts") if isinstance(document, dict) else None
        if not isinstance(contexts, dict) or not all(isinstance(c, dict) for c in contexts.values()):
            raise ConfigurationError(
                f"the config file {path} needs a `contexts:` mapping of names to settings"
            )
        cleaned = {str(name): {k: str(v) for k, v in c.items() if k in KEYS} for name, c in contexts.items()}
        return cls(path, str(document.get("current-context") or ""), cleaned)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        text = yaml.safe_dump({"current-context": self.current, "contexts": self.contexts}, sort_keys=False)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)

    def context(self, name: str | None) -> dict[str, str]:
        """The named context, else the current one, else none (an empty one)."""
        chosen = name or self.current
        if not chosen:
            return {}
        if chosen not in self.contexts:
            known = ", ".join(sorted(self.contexts)) or "none yet"
            raise ConfigurationError(f"no context {chosen!r} in {self.path} (contexts: {known})")
        return self.contexts[chosen]


def token_from(command: str) -> str:
    """Run a context's `token-command` and return what it prints."""
    try:
        # The user's own config file names the command, as a shell alias would.
        ran = subprocess.run(  # noqa: S603
            shlex.split(command), capture_output=True, text=True, timeout=_TOKEN_COMMAND_TIMEOUT, check=False
        )
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        raise ConfigurationError(f"the context's token-command failed: {exc}") from None
    if ran.returncode != 0 or not ran.stdout.strip():
        why = ran.stderr.strip().splitlines()[-1] if ran.stderr.strip() else f"exit status {ran.returncode}"
        raise ConfigurationError(f"the context's token-command printed no token ({why})")
    return ran.stdout.strip()
