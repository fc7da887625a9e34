"""Fixtures of the cross-namespace tests: two hosts, A and B, joined by a veth pair."""
from __future__ import annotations

import os

import pytest

from netns_support import Hosts, netns_unavailable


@pytest.fixture
def hosts():
    """Fresh namespaces for one test, removed afterwards with every process started in them."""
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    made = Hosts(prefix=f'bs{os.getpid() % 100000}')
    try:
        made.create()
        yield made
    finally:
        made.close()
