"""Who sent a message, and whether the ventilator obeys its TERMINATE.

A ``zmq.Frame`` received with ``copy=False`` carries its peer's address (``Peer-Address``) and, under
CurveZMQ, its public key (``User-Id``); bytes carry neither.
"""
from __future__ import annotations

import ipaddress
from typing import Optional

import zmq

from ..security import AuthConfig

__all__ = ['may_terminate', 'is_loopback_address', 'peer_of']


def _peer_address(frame) -> Optional[str]:
    try:
        return frame.get('Peer-Address') if isinstance(frame, zmq.Frame) else None
    except zmq.ZMQError:  # a frame that came over no network (inproc) has no such property
        return None


def may_terminate(auth: AuthConfig, frame) -> bool:
    """Whether to obey a TERMINATE whose first frame is ``frame``.

    With ``allow_remote_terminate`` (without ``-auth_dir``, or with ``-remote_terminate``), yes, as in
    1.10; with CurveZMQ on, only keys in ``authorized/`` get a message through at all. Without it
    (``-auth_dir`` alone, or ``-no_remote_terminate``), only a TERMINATE from this machine's loopback
    is obeyed (``bert-serving-terminate`` on the server's host); SIGTERM and Ctrl-C always work.

    Args:
        frame: the request's first frame as a ``zmq.Frame`` (received with ``copy=False``), whose
            ``Peer-Address`` says where it came from. Bytes carry no address and count as remote.
    """
    if auth.allow_remote_terminate:
        return True
    return is_loopback_address(_peer_address(frame) or '')


def is_loopback_address(address: str) -> bool:
    """Whether a peer address (as ``Peer-Address`` gives it) is this machine's loopback."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:  # empty, a name, or scoped (fe80::1%eth0): not loopback
        return False
    mapped = getattr(ip, 'ipv4_mapped', None)
    return (mapped or ip).is_loopback


def peer_of(frame) -> str:
    """Who sent ``frame`` (a ``zmq.Frame``), for logs: ``key <z85> from <address>`` as far as known."""
    parts = []
    if isinstance(frame, zmq.Frame):
        try:
            parts.append(f'key {frame.get("User-Id")}')
        except zmq.ZMQError:
            pass
    address = _peer_address(frame)
    if address:
        parts.append(f'from {address}')
    return ' '.join(parts) or 'an unknown peer'
