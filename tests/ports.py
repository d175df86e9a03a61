"""Free TCP ports on 127.0.0.1 for servers a test starts in a process of their own (PostgreSQL, Dovecot), and for
a port that nobody listens on.

Such a port is found free now and bound by the server later (after `initdb`, say). Meanwhile two things could take
it: the kernel, as the local port of any outgoing connection (it picks those from ip_local_port_range), and another
pytest-xdist worker looking for a free port at the same moment. So the ports come from below the kernel's range,
from a block of its own for each xdist worker (PYTEST_XDIST_WORKER is gw0, gw1, ...), never twice in one run.
(Servers in the test's own process, such as tests/smtpd.py, bind port 0 and keep the socket: no such gap.)
"""

from __future__ import annotations

import os
import random
import re
import socket
from pathlib import Path

HOST = "127.0.0.1"
FIRST = 20000
BLOCK = 500
_given: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _block() -> range:
    match = re.fullmatch(r"gw(\d+)", os.environ.get("PYTEST_XDIST_WORKER", "gw0"))
    worker = int(match.group(1)) if match else 0
    blocks = max(1, (_ephemeral_low() - FIRST) // BLOCK)
    start = FIRST + (worker % blocks) * BLOCK
    return range(start, start + BLOCK)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing is bound to now, and that no other test of this run is given."""
    candidates = [p for p in _block() if p not in _given]
    random.shuffle(candidates)
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free port left in {_block()}")
