"""Security across a real network boundary: a server with -auth_dir and -http_token on host A, peers on
host B (network namespaces joined by veth). An authorised client and worker get in; a client without
a key or with an unknown key gets no answer and no status and cannot terminate the server, nor can
an authorised one from another host (no -remote_terminate); a worker with an unknown key is refused;
HTTP needs the bearer token, also through the openai client."""
from __future__ import annotations

import shutil
import sys
import textwrap

import pytest

from bert_serving.server.keygen import write_keypair
from bert_serving.server.security import AUTHORIZED_DIR, WORKERS_DIR

from netns_support import ADDR_A, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PORT, PORT_OUT, PORT_WORKER, HTTP_PORT = 5555, 5556, 5557, 8125
TOKEN = 'netns-token-3f9a1c7e5b2d'
FAKE = ['-engine', 'fake', '-cpu']
PY_WORKER = [sys.executable, '-c', 'import sys; from bert_serving.server.cli import worker; sys.exit(worker())']

# Runs on host B: one encode (and a status) with the given keys; prints what happened.
CLIENT = textwrap.dedent(f'''
    import json, sys
    from bert_serving.client import BertClient
    keys = dict(zip(('server_key', 'client_key'), sys.argv[1:3])) if len(sys.argv) > 2 else {{}}
    out = {{}}
    try:
        with BertClient(ip='{ADDR_A}', port={PORT}, port_out={PORT_OUT}, timeout=3000, **keys) as bc:
            out['shape'] = list(bc.encode(['across the wire']).shape)
            out['workers'] = bc.server_status['workers']
    except Exception as e:
        out['error'] = type(e).__name__
    print(json.dumps(out))
''')

TERMINATE = textwrap.dedent(f'''
    import json, sys
    from bert_serving.server.cli import terminate
    args = ['-ip', '{ADDR_A}', '-port', '{PORT}', '-timeout', '3000'] + sys.argv[1:]
    print(json.dumps({{'code': terminate(args)}}))
''')

HTTP = textwrap.dedent(f'''
    import json, sys, urllib.error, urllib.request
    import openai
    base = 'http://{ADDR_A}:{HTTP_PORT}'
    out = {{}}
    def call(path, token=None, body=None):
        req = urllib.request.Request(base + path, data=None if body is None else json.dumps(body).encode(),
                                     headers={{'Content-Type': 'application/json'}})
        if token:
            req.add_header('Authorization', 'Bearer ' + token)
        try:
            with urllib.request.urlopen(req, timeout=20) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
    body = {{'input': ['hello'], 'model': 'bert'}}
    out['health'] = call('/health')
    out['no_token'] = call('/v1/embeddings', body=body)
    out['wrong_token'] = call('/v1/embeddings', token='nope', body=body)
    out['token'] = call('/v1/embeddings', token=sys.argv[1], body=body)
    client = openai.OpenAI(base_url=base + '/v1', api_key=sys.argv[1], max_retries=0, timeout=20)
    out['openai_dim'] = len(client.embeddings.create(input=['hi there'], model='bert').data[0].embedding)
    try:
        openai.OpenAI(base_url=base + '/v1', api_key='nope', max_retries=0, timeout=20).embeddings.create(
            input=['hi'], model='bert')
        out['openai_wrong'] = 'served'
    except openai.AuthenticationError:
        out['openai_wrong'] = 401
    print(json.dumps(out))
''')


@pytest.fixture
def keys(tmp_path):
    """server (its auth_dir), alice (an authorised client), worker (an authorised worker), mallory (unknown)."""
    auth = tmp_path / 'auth'
    write_keypair(auth, 'server')
    for name in ('alice', 'worker', 'mallory'):
        write_keypair(tmp_path / name, name)
    shutil.copy(tmp_path / 'alice' / 'alice.key', auth / AUTHORIZED_DIR / 'alice.key')
    shutil.copy(tmp_path / 'worker' / 'worker.key', auth / WORKERS_DIR / 'worker.key')
    return tmp_path


def _as(keys, name):
    return [str(keys / 'auth' / 'server.key'), str(keys / name / f'{name}.key_secret')]


def test_curve_and_token_across_hosts(hosts, keys, tmp_path):
    (tmp_path / 'token').write_text(TOKEN + '\n')
    server_log = tmp_path / 'server.log'
    server = hosts.start(hosts.a, [sys.executable, '-c', 'import sys; from bert_serving.server.cli import main; '
                                   'sys.exit(main())', *FAKE, '-num_worker', '1', '-port', str(PORT),
                                   '-port_out', str(PORT_OUT), '-port_worker', str(PORT_WORKER),
                                   '-auth_dir', str(keys / 'auth'), '-http_port', str(HTTP_PORT),
                                   '-http_token_file', str(tmp_path / 'token')], server_log)
    alice = lambda: hosts.python_json(hosts.b, CLIENT, *_as(keys, 'alice'))  # noqa: E731
    assert wait_for(lambda: 'shape' in alice(), 90), server_log.read_text()[-3000:]

    # An authorised worker on B joins and is listed; one with an unknown key never gets in.
    worker_flags = [*FAKE, '-ip', ADDR_A, '-port_worker', str(PORT_WORKER)]
    good = hosts.start(hosts.b, [*PY_WORKER, *worker_flags, '-server_key', _as(keys, 'worker')[0],
                                 '-client_key', _as(keys, 'worker')[1]], tmp_path / 'worker.log')
    bad = hosts.start(hosts.b, [*PY_WORKER, *worker_flags, '-server_key', _as(keys, 'mallory')[0],
                                '-client_key', _as(keys, 'mallory')[1]], tmp_path / 'mallory-worker.log')
    remote = wait_for(lambda: [w for w in alice().get('workers', []) if w['remote'] and w['state'] == 'ready'], 60)
    assert remote and len(remote) == 1, server_log.read_text()[-3000:]
    assert wait_for(lambda: 'mallory' in server_log.read_text() or 'refused' in server_log.read_text(), 20), \
        'the server did not log the refused key'
    assert bad.poll() is None and len([w for w in alice()['workers'] if w['remote']]) == 1

    # Strangers: no key, or a key the server does not know. Nothing comes back; TERMINATE is ignored.
    assert hosts.python_json(hosts.b, CLIENT) == {'error': 'BertTimeoutError'}
    assert hosts.python_json(hosts.b, CLIENT, *_as(keys, 'mallory')) == {'error': 'BertTimeoutError'}
    stranger_stop = hosts.python_json(hosts.b, TERMINATE, '-server_key', _as(keys, 'mallory')[0],
                                      '-client_key', _as(keys, 'mallory')[1])
    assert stranger_stop['code'] != 0
    assert server.poll() is None and 'shape' in alice(), 'a stranger stopped the server'

    # HTTP across the hosts: the token is required, /health is open, the openai client uses api_key.
    http = hosts.python_json(hosts.b, HTTP, TOKEN)
    assert http == {'health': 200, 'no_token': 401, 'wrong_token': 401, 'token': 200, 'openai_dim': 8,
                    'openai_wrong': 401}

    # alice is authorised, but with -auth_dir (and no -remote_terminate) only host A may stop the
    # server: her TERMINATE from B is ignored, logged, and the server keeps serving her.
    assert hosts.python_json(hosts.b, TERMINATE, '-server_key', _as(keys, 'alice')[0],
                             '-client_key', _as(keys, 'alice')[1])['code'] != 0
    assert server.poll() is None and 'shape' in alice(), 'an authorised client stopped a shared server'
    assert 'ignored a TERMINATE' in server_log.read_text()
    assert hosts.stop(server) == 0
    assert hosts.stop(good) == 0
    hosts.stop(bad)
