"""Ports for the servers the tests start."""

from __future__ import annotations

import random
import socket
from pathlib import Path


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range.

    A server restarted on the port it had (a replica brought back after a SIGKILL) must
    find it free: a port from the ephemeral range can be taken meanwhile as the local
    end of any outgoing connection, which makes the restart fail with "address in use".
    """
    floor = _ephemeral_floor()
    for _ in range(200):
        port = random.randrange(10_000, max(floor, 10_001))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")
