"""The benchmark's servers get their ports from ``benchmarks.service_peer.free_port``: a port the
kernel picks from its ephemeral range, fine for one ``make bench``. Under the test suite, the other
xdist workers' outgoing connections take ephemeral ports too, and one could take such a port between
its pick and the server's bind. So here the benchmark modules get the session's ports instead
(``tests/conftest.py``: below the ephemeral range, a disjoint share per xdist worker)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # benchmarks/ is a top-level folder, not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks import compare, service_peer  # noqa: E402


@pytest.fixture(autouse=True)
def session_ports(monkeypatch, free_port):
    monkeypatch.setattr(service_peer, 'free_port', free_port)
    monkeypatch.setattr(compare, 'free_port', free_port)
