"""Writes CurveZMQ key pairs for ``bert-serving-keygen``: the server's pair with its empty
``authorized/`` and ``authorized_workers/`` folders, or a client's or worker's pair, private to
their owner. What the server does with them is ``security``.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Tuple

import zmq.auth

from .errors import ConfigError
from .security import AUTHORIZED_DIR, WORKERS_DIR

__all__ = ['write_keypair']


def write_keypair(directory, name: str) -> Tuple[Path, Path]:
    """Writes ``NAME.key`` (public) and ``NAME.key_secret`` (both halves) in ``directory``, as
    ``zmq.auth.create_certificates`` does, readable by their owner only (the public one may be
    shared: it is made world-readable afterwards). For ``name == 'server'`` it also creates the
    empty ``authorized/`` and ``authorized_workers/`` folders that ``-auth_dir`` expects.

    Raises:
        ConfigError: ``name`` is not a plain file name, a file of that pair exists already (a
            pair is never overwritten: peers may hold its public key), or ``directory`` (or its
            ``authorized/``) exists but is owned by another user or writable by group or others,
            who could then read the secret key or add keys of their own.
    """
    if not name or name != Path(name).name or name.startswith('.'):
        raise ConfigError(f'the key name must be a plain file name such as "server" or "alice", got {name!r}')
    folder = Path(directory)
    for path in (folder, folder / AUTHORIZED_DIR):
        _check_private_folder(path)
    public, secret = folder / f'{name}.key', folder / f'{name}.key_secret'
    for path in (public, secret):
        if path.exists():
            raise ConfigError(f'{path} exists already; choose another NAME, or delete that pair first (every '
                              'peer holding its public key must then get the new one)')
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    old_umask = os.umask(0o077)  # the secret file is never readable by others, not even for a moment
    try:
        zmq.auth.create_certificates(folder, name)
        if name == 'server':
            (folder / AUTHORIZED_DIR).mkdir(mode=0o700, exist_ok=True)
            (folder / WORKERS_DIR).mkdir(mode=0o700, exist_ok=True)
    finally:
        os.umask(old_umask)
    public.chmod(0o644)
    return public, secret


def _check_private_folder(path: Path) -> None:
    """Refuses an existing folder that someone else could write into or that is not ours."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return  # write_keypair creates it, private
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f'{path} exists and is not a folder; give a folder for the keys')
    if hasattr(os, 'geteuid') and st.st_uid != os.geteuid():
        raise ConfigError(f'{path} belongs to another user (uid {st.st_uid}), who could read or replace the keys; '
                          f'use a folder of your own, or take it over: chown {os.geteuid()} {path}')
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(f'{path} is writable by {"others" if st.st_mode & stat.S_IWOTH else "its group"} '
                          f'(mode {stat.S_IMODE(st.st_mode):o}), who could swap the keys; make it private: '
                          f'chmod 700 {path}')
