"""Who may stop the server with TERMINATE. Without -auth_dir: anyone, as in 1.10 (``-no_remote_terminate``
limits it to this machine). With -auth_dir the server is shared between keys, so an authorised client
may not stop it for everyone: only this machine may, unless ``-remote_terminate``.

The decision is :func:`pipeline.peers.may_terminate` on the request's first frame; a frame without a peer
address (bytes) stands for a remote peer here. The cross-host test is
tests/network/test_secure_network.py, where an authorised TERMINATE from another host is ignored.
"""
from __future__ import annotations

from argparse import Namespace

import pytest

from bert_serving.server.args import get_args_parser
from bert_serving.server.errors import ConfigError
from bert_serving.server.keygen import write_keypair
from bert_serving.server.pipeline.peers import may_terminate
from bert_serving.server.security import AUTHORIZED_DIR, AuthConfig

REMOTE_FRAME = b'no peer address: counts as remote'


@pytest.fixture
def auth_dir(tmp_path):
    folder = tmp_path / 'auth'
    write_keypair(folder, 'server')
    write_keypair(tmp_path / 'alice', 'alice')
    (tmp_path / 'alice' / 'alice.key').rename(folder / AUTHORIZED_DIR / 'alice.key')
    return str(folder)


@pytest.mark.parametrize('flags, remote_allowed', [
    ([], True),  # 1.10
    (['-no_remote_terminate'], False),
    (['-remote_terminate'], True),
    (['-auth_dir', '{auth}'], False),  # new default with keys
    (['-auth_dir', '{auth}', '-remote_terminate'], True),
    (['-auth_dir', '{auth}', '-no_remote_terminate'], False),
])
def test_remote_terminate_by_flags(auth_dir, flags, remote_allowed):
    args = get_args_parser().parse_args([f.format(auth=auth_dir) for f in flags])
    auth = AuthConfig.from_namespace(args)
    assert auth.allow_remote_terminate is remote_allowed
    assert may_terminate(auth, REMOTE_FRAME) is remote_allowed


def test_both_terminate_flags_are_refused(auth_dir, capsys):
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(['-remote_terminate', '-no_remote_terminate'])
    assert 'not allowed with argument' in capsys.readouterr().err
    with pytest.raises(ConfigError, match='not both'):
        AuthConfig.from_namespace(Namespace(auth_dir=auth_dir, remote_terminate=True, no_remote_terminate=True))


def test_the_help_says_what_each_flag_does():
    text = get_args_parser().format_help()
    assert '-remote_terminate' in text and 'default with -auth_dir' in text
