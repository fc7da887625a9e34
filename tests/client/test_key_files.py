"""BertClient's server_key / client_key: every wrong key file is refused before a socket opens, with
a message that names the file and says which one to give. (The CurveZMQ round trip itself is in
tests/server/test_security.py, against sockets secured by the server's own module.)"""
from __future__ import annotations

import zmq.auth
import pytest

from bert_serving.client import BertClient, ConcurrentBertClient, KeyFileError
from bert_serving.client.security import CurveKeys


@pytest.fixture
def keys(tmp_path):
    """Paths of a server pair and a client pair, as ``bert-serving-keygen`` writes them."""
    server_public, server_secret = zmq.auth.create_certificates(tmp_path, 'server')
    client_public, client_secret = zmq.auth.create_certificates(tmp_path, 'alice')
    return {'server.key': server_public, 'server.key_secret': server_secret,
            'alice.key': client_public, 'alice.key_secret': client_secret}


def make(**kwargs):
    return BertClient(ip='127.0.0.1', port=1, port_out=2, ignore_all_checks=True, **kwargs)


@pytest.mark.parametrize('server_key, client_key, message', [
    ('server.key_secret', 'alice.key_secret', r'server_key: .*server\.key_secret holds a secret key'),
    ('server.key', 'alice.key', r'client_key: .*alice\.key is a public certificate without a secret key'),
    ('missing.key', 'alice.key_secret', r'server_key: cannot read the key file .*missing\.key'),
    ('server.key', 'missing.key_secret', r'client_key: cannot read the key file'),
    ('server.key', None, 'server_key is set but client_key is not'),
    (None, 'alice.key_secret', 'client_key is set but server_key is not'),
])
def test_a_wrong_key_option_says_what_to_give(keys, tmp_path, server_key, client_key, message):
    def path(name):
        return None if name is None else keys.get(name, str(tmp_path / name))
    with pytest.raises(KeyFileError, match=message):
        make(server_key=path(server_key), client_key=path(client_key))
    with pytest.raises(KeyFileError, match=message):  # the pool fails the same way, leaving nothing open
        ConcurrentBertClient(max_concurrency=2, ip='127.0.0.1', port=1, port_out=2, ignore_all_checks=True,
                             server_key=path(server_key), client_key=path(client_key))


def test_a_file_that_is_no_certificate_is_refused(keys, tmp_path):
    junk = tmp_path / 'junk.key'
    junk.write_text('just text\n')
    with pytest.raises(KeyFileError, match='not a ZeroMQ certificate'):
        make(server_key=str(junk), client_key=keys['alice.key_secret'])
    broken = tmp_path / 'broken.key'
    broken.write_text('curve\n    public-key = "tooshort"\n')
    with pytest.raises(KeyFileError, match='40-character z85'):
        make(server_key=str(broken), client_key=keys['alice.key_secret'])


def test_the_environment_fills_in_missing_options(keys, monkeypatch):
    monkeypatch.setenv('BERT_SERVING_SERVER_KEY', keys['server.key'])
    monkeypatch.setenv('BERT_SERVING_CLIENT_KEY', keys['alice.key'])  # wrong kind: proves it was read
    with pytest.raises(KeyFileError, match='client_key: .*alice.key is a public certificate'):
        make()
    with make(client_key=keys['alice.key_secret']) as bc:  # an argument wins over the environment
        assert bc._sender.mechanism == zmq.CURVE and bc._receiver.mechanism == zmq.CURVE
        assert bc._curve.server_public.encode() == zmq.auth.load_certificate(keys['server.key'])[0]
        assert bc._curve.public.encode() == zmq.auth.load_certificate(keys['alice.key'])[0]


def test_without_keys_the_client_stays_plain_as_1_10(monkeypatch):
    monkeypatch.delenv('BERT_SERVING_SERVER_KEY', raising=False)
    monkeypatch.delenv('BERT_SERVING_CLIENT_KEY', raising=False)
    assert CurveKeys.from_files() is None
    with make() as bc:
        assert bc._sender.mechanism == zmq.NULL and bc._receiver.mechanism == zmq.NULL
