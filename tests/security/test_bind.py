"""``-bind`` covers the HTTP port too (``-http_host`` overrides it), and the proxy reaches the ZeroMQ
ports through an address where they listen: before, the proxy listened on every interface whatever
-bind said, and connected to 127.0.0.1 even when the ports listened elsewhere, so it never got an
answer.

The servers here run ``-engine fake`` on loopback addresses other than 127.0.0.1 (Linux routes all of
127.0.0.0/8 to ``lo``) and on ``::1``.
"""
from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

import pytest

from bert_serving.server.args import get_args_parser
from bert_serving.server.errors import ConfigError
from bert_serving.server.http.settings import ProxyConfig, proxy_hosts

from service_support import assert_port_free

READY_SECONDS = 60
HTTP_TIMEOUT = 30


@pytest.mark.parametrize('bind, http_host, listen, connect', [
    ('*', None, '0.0.0.0', '127.0.0.1'),
    ('0.0.0.0', None, '0.0.0.0', '127.0.0.1'),
    ('::', None, '::', '::1'),
    ('127.0.0.2', None, '127.0.0.2', '127.0.0.2'),
    ('[::1]', None, '::1', '::1'),
    ('::1', None, '::1', '::1'),
    ('lo', None, '127.0.0.1', '127.0.0.1'),  # an interface: its address, as ZeroMQ binds it
    ('*', '127.0.0.1', '127.0.0.1', '127.0.0.1'),
    ('127.0.0.2', 'lo', '127.0.0.1', '127.0.0.2'),
    ('127.0.0.2', '*', '0.0.0.0', '127.0.0.2'),
])
def test_where_the_proxy_listens_and_connects(bind, http_host, listen, connect):
    assert proxy_hosts(bind, http_host) == (listen, connect)


def test_the_flags_fill_in_the_proxy_config():
    parse = get_args_parser().parse_args
    settings = ProxyConfig.from_namespace(parse(['-http_port', '1', '-bind', '127.0.0.3']))
    assert (settings.host, settings.server_ip) == ('127.0.0.3', '127.0.0.3')
    settings = ProxyConfig.from_namespace(parse(['-http_port', '1', '-http_host', '::1']))
    assert (settings.host, settings.server_ip) == ('::1', '127.0.0.1')


@pytest.mark.parametrize('flags, named', [(['-bind', 'nosuchif0'], '-bind nosuchif0'),
                                          (['-http_host', 'nosuchif1'], '-http_host nosuchif1')])
def test_an_unknown_interface_is_a_clear_error(flags, named):
    with pytest.raises(ConfigError, match=named) as refused:
        ProxyConfig.from_namespace(get_args_parser().parse_args(['-http_port', '1', *flags]))
    assert 'ip addr' in str(refused.value)


def _http(url: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={'Content-Type': 'application/json'})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


def _wait_healthy(base: str) -> None:
    deadline = time.monotonic() + READY_SECONDS
    status = None
    while time.monotonic() < deadline:
        try:
            status, _ = _http(base + '/health')
        except OSError:
            pass
        if status == 200:
            return
        time.sleep(0.1)
    pytest.fail(f'{base}/health never said 200 (last: {status})')


def _refused(address: str, port: int) -> bool:
    family = socket.AF_INET6 if ':' in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(HTTP_TIMEOUT)
        return s.connect_ex((address, port)) != 0


@pytest.mark.parametrize('bind, url_host, elsewhere', [('127.0.0.2', '127.0.0.2', '127.0.0.1'),
                                                       ('::1', '[::1]', '127.0.0.1')])
def test_a_server_bound_to_one_address_serves_http_there_only(fake_server, pick_port, bind, url_host, elsewhere):
    http_port = pick_port()
    with fake_server(['-num_worker', '1', '-bind', bind, '-http_port', str(http_port)]):
        base = f'http://{url_host}:{http_port}'
        _wait_healthy(base)  # the proxy reached the ZeroMQ ports where they listen
        status, body = _http(base + '/encode', {'id': 1, 'texts': ['hello world', 'a']})
        assert status == 200 and len(body['result']) == 2
        assert _refused(elsewhere, http_port), f'the HTTP port listened on {elsewhere} despite -bind {bind}'
    assert_port_free(http_port)
