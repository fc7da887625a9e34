"""A real server with -auth_dir (fake engine) on loopback: an authorized client is served, a stranger
gets nothing and cannot terminate it, and its HTTP proxy reaches it over CurveZMQ behind a token."""
from __future__ import annotations

import threading
import urllib.error
import urllib.request

import pytest

from bert_serving.client import BertTimeoutError
from bert_serving.server.keygen import write_keypair
from bert_serving.server.security import AUTHORIZED_DIR
from bert_serving.server.service import BertServer

from service_support import FAKE, REPLY_MS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NOTHING_MS = 1500
TOKEN = 'e2e-token-6b1f0c9d2a7e4f3b'


@pytest.fixture(scope='module')
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp('auth')
    write_keypair(root / 'dir', 'server')
    for name in ('alice', 'bob'):
        write_keypair(root / name, name)
    (root / 'alice' / 'alice.key').rename(root / 'dir' / AUTHORIZED_DIR / 'alice.key')
    return root


@pytest.fixture(scope='module')
def secured(launch, keys, pick_port):
    http_port = pick_port()
    flags = ['-auth_dir', str(keys / 'dir'), '-bind', '127.0.0.1', '-http_port', str(http_port),
             '-http_token', TOKEN]
    with launch(FAKE, flags) as running:
        running.http_port = http_port
        yield running


def as_(keys, name):
    return {'server_key': str(keys / 'dir' / 'server.key'), 'client_key': str(keys / name / f'{name}.key_secret')}


def test_an_authorized_client_is_served(secured, keys):
    with secured.client(**as_(keys, 'alice')) as bc:
        assert bc.encode(['hello world']).shape[0] == 1
        assert bc.server_status['statistic']['num_data_request'] >= 1
        assert bc.server_config.get('http_token') in (None, '***')  # never the token itself


@pytest.mark.parametrize('who', ['bob', None])
def test_a_stranger_gets_nothing_and_cannot_terminate(secured, keys, who):
    keys_of = as_(keys, who) if who else {}
    with secured.client(ignore_all_checks=True, timeout=NOTHING_MS, **keys_of) as bc:
        with pytest.raises(BertTimeoutError):
            bc.encode(['let me in'])
        with pytest.raises(BertTimeoutError):
            bc.server_status
    assert not BertServer.shutdown(port=secured.port, ip='127.0.0.1', timeout=NOTHING_MS, **keys_of)
    threading.Event().wait(NOTHING_MS / 1000)
    assert secured.server.is_alive() and not secured.server.stopping
    with secured.client(**as_(keys, 'alice')) as bc:  # still serving
        assert bc.encode(['still there']).shape[0] == 1


def test_the_http_proxy_reaches_the_server_over_curve_behind_the_token(secured):
    url = f'http://127.0.0.1:{secured.http_port}'
    with urllib.request.urlopen(url + '/health', timeout=REPLY_MS / 1000) as r:
        assert r.status == 200
    request = urllib.request.Request(url + '/encode', data=b'{"id": 1, "texts": ["a b"]}', method='POST',
                                     headers={'Content-Type': 'application/json',
                                              'Authorization': f'Bearer {TOKEN}'})
    with urllib.request.urlopen(request, timeout=REPLY_MS / 1000) as r:
        assert r.status == 200
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url + '/status/server', timeout=REPLY_MS / 1000)
    assert refused.value.code == 401
    refused.value.close()


def test_an_authorized_terminate_stops_it(server_factory, keys):
    running = server_factory(FAKE, ['-auth_dir', str(keys / 'dir'), '-bind', '127.0.0.1'])
    assert BertServer.shutdown(port=running.port, ip='127.0.0.1', timeout=REPLY_MS, **as_(keys, 'alice'))
    running.server.join(REPLY_MS / 1000)
    assert not running.server.is_alive()


def test_no_remote_terminate_still_obeys_this_machine(server_factory, keys):
    running = server_factory(FAKE, ['-auth_dir', str(keys / 'dir'), '-no_remote_terminate'])
    assert BertServer.shutdown(port=running.port, ip='127.0.0.1', timeout=REPLY_MS, **as_(keys, 'alice'))
    running.server.join(REPLY_MS / 1000)
    assert not running.server.is_alive()
