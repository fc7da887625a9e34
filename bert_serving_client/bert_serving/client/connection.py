"""ConnectionWatch: whether a BertClient's two connections to its server are up.

Binds nothing and connects nothing of its own: it reads the ZeroMQ socket monitor of the client's
PUSH (requests, to ``port``) and SUB (replies, from ``port_out``), over inproc PAIR sockets that
libzmq creates in the client's context.

A connection that the server ends (its process killed or stopped: the kernel closes its TCP side)
shows as DISCONNECTED at once. A peer that vanishes without closing (a cut link, a frozen host)
is found by ZMTP heartbeats: the client PINGs every ``HEARTBEAT_IVL_MS``, and libzmq drops a
connection that answers nothing for ``HEARTBEAT_TIMEOUT_MS``, which the monitor then reports the
same way. libzmq keeps reconnecting meanwhile; CONNECTED says the server is back.
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional

import zmq
from zmq.utils.monitor import recv_monitor_message

__all__ = ['ConnectionWatch', 'HEARTBEAT_IVL_MS', 'HEARTBEAT_TIMEOUT_MS', 'HEARTBEAT_TTL_MS', 'GONE_AFTER_S']

# Detection of a silent peer takes up to IVL + TIMEOUT (6 s); with GONE_AFTER_S that stays under
# the 20 s in which a client must report a server that went away.
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 5000
# Asks the server to drop this client's connection after so long without a word from it.
HEARTBEAT_TTL_MS = 10000
# How long a dropped connection may stay down before pending requests fail with
# BertServerGoneError: a server restarted within it (same ports) loses nothing.
GONE_AFTER_S = 12.0

_EVENTS = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED


def enable_heartbeats(sock: zmq.Socket) -> None:
    """Makes ``sock`` PING its peer so that a silent one is dropped; call it before ``connect``."""
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TTL_MS)


class _Link:
    """The state of one monitored socket's connection."""

    def __init__(self, name: str, monitor: zmq.Socket):
        self.name = name
        self.monitor = monitor
        self.connected = False
        self.lost_since: Optional[float] = None  # time.monotonic() of the drop, while it is down


class ConnectionWatch:
    """Follows the connections of the client's sockets.

    Args:
        sockets: name -> a connecting socket with a single endpoint ('requests' -> PUSH, ...).
            Monitor them before ``connect``, so that no event is missed.

    Attributes:
        gone_after: Seconds a dropped connection may stay down before the server counts as gone
            (``GONE_AFTER_S`` when the watch was made).
    """

    def __init__(self, sockets: Dict[str, zmq.Socket]):
        self.gone_after = GONE_AFTER_S
        self._links: List[_Link] = [_Link(name, sock.get_monitor_socket(_EVENTS)) for name, sock in sockets.items()]
        self._reconnects = 0

    @property
    def monitors(self) -> List[zmq.Socket]:
        """The PAIR sockets to poll: one turns readable when its socket's connection changes."""
        return [link.monitor for link in self._links]

    @property
    def reconnects(self) -> int:
        """How often a dropped connection of ``requests`` came back; grows by one per return."""
        return self._reconnects

    def update(self) -> None:
        """Reads every event the monitors hold, without blocking."""
        for link in self._links:
            while link.monitor.poll(0, zmq.POLLIN):
                event = recv_monitor_message(link.monitor)['event']
                if event == zmq.EVENT_CONNECTED:
                    if link.lost_since is not None and link.name == 'requests':
                        self._reconnects += 1
                    link.connected, link.lost_since = True, None
                elif event == zmq.EVENT_DISCONNECTED and link.connected:
                    link.connected, link.lost_since = False, time.monotonic()

    def is_up(self, name: str) -> bool:
        """Whether the socket ``name`` has a connection now."""
        return any(link.connected for link in self._links if link.name == name)

    def lost_since(self) -> Optional[float]:
        """When the oldest connection that is down now dropped (``time.monotonic()``), or None
        if none is down. A socket that never connected is not "lost": its server is not up yet."""
        return min((link.lost_since for link in self._links if link.lost_since is not None), default=None)

    def down(self) -> List[str]:
        """Names of the sockets whose connection dropped and is not back."""
        return [link.name for link in self._links if link.lost_since is not None]
