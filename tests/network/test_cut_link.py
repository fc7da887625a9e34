"""Nothing is lost across a cut link. A server with its local worker on host A, a bert-serving-worker on
host B (network namespaces joined by veth); six clients keep requests of 200 sentences in flight while
B's cable is cut for 3, 8 and 30 s. Every request is answered, each with its own vectors.

A batch or a DONE in a TCP connection that ZeroMQ drops (its heartbeats give up after 5 s) is gone;
so are the results in the worker's connection to -port_worker_sink, which the test destroys at the
end of each cut (as a router or NAT that forgot it would). The server must notice from the worker's
heartbeats, which name every batch the worker holds, and send again what was lost. -batch_timeout
is far above the clients' timeout, so anything that waits for it fails the test."""
from __future__ import annotations

import json
import sys
import textwrap

import pytest

from netns_support import ADDR_A, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PORT, PORT_OUT, PORT_WORKER = 5555, 5556, 5557
PORT_WORKER_SINK = PORT_WORKER + 1  # the server's default
FAKE = ['-engine', 'fake', '-cpu', '-max_batch_size', '16']
SERVER = [sys.executable, '-c', 'import sys; from bert_serving.server.cli import main; sys.exit(main())',
          *FAKE, '-num_worker', '1', '-port', str(PORT), '-port_out', str(PORT_OUT), '-port_worker', str(PORT_WORKER),
          '-batch_timeout', '600']
WORKER = [sys.executable, '-c', 'import sys; from bert_serving.server.cli import worker; sys.exit(worker())',
          *FAKE, '-ip', ADDR_A, '-port_worker', str(PORT_WORKER)]
CLIENTS, SENTENCES = 6, 200
CLIENT_TIMEOUT_MS = 120_000  # far more than a request needs with one worker; far less than -batch_timeout

STATUS = textwrap.dedent(f'''
    import json
    from bert_serving.client import BertClient
    with BertClient(ip='127.0.0.1', port={PORT}, port_out={PORT_OUT}, timeout=5000) as bc:
        print(json.dumps(bc.server_status['workers']))
''')

# CLIENTS threads, each with its own client, send requests of SENTENCES known sentences (one in ten
# makes the fake model slow, so requests stay in flight) until the stop file appears; then it prints
# what became of each request.
TRAFFIC = textwrap.dedent(f'''
    import json, os, sys, threading, time
    import numpy as np
    from bert_serving.client import BertClient
    from bert_serving.server.config import EngineConfig
    from bert_serving.server.engine.fake import FakeEngine
    stop_file = sys.argv[1]
    fake = FakeEngine(EngineConfig(engine='fake'))
    lock = threading.Lock()
    outcome = {{'sent': 0, 'ok': 0, 'wrong': 0, 'errors': []}}

    def client(c):
        with BertClient(ip='127.0.0.1', port={PORT}, port_out={PORT_OUT}, timeout={CLIENT_TIMEOUT_MS}) as bc:
            i = 0
            while not os.path.exists(stop_file):
                texts = ['client %d request %d sentence %d%s' % (c, i, j, ' __slow__' if j % 10 == 0 else '')
                         for j in range({SENTENCES})]
                i += 1
                started = time.time()
                try:
                    vectors = bc.encode(texts)
                except Exception as e:
                    with lock:
                        outcome['sent'] += 1
                        outcome['errors'].append('%s at %.0f (sent %.0f)' % (repr(e)[:200], time.time(), started))
                    continue
                good = vectors.shape == ({SENTENCES}, 8) and np.allclose(vectors, fake.encode(texts)[0])
                with lock:
                    outcome['sent'] += 1
                    outcome['ok' if good else 'wrong'] += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range({CLIENTS})]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(outcome))
''')


def _workers(hosts):
    try:
        return hosts.python_json(hosts.a, STATUS, timeout=30)
    except Exception:  # not up yet, or busy
        return None


def _remote(hosts, min_batches=0):
    """The remote worker's status entry if it is ready and has served at least min_batches."""
    for w in _workers(hosts) or []:
        if w['remote'] and w['state'] == 'ready' and w['batches'] >= min_batches:
            return w
    return None


def test_links_cut_for_3_8_and_30_seconds_lose_nothing(hosts, tmp_path):
    server = hosts.start(hosts.a, SERVER, tmp_path / 'server.log')
    remote = hosts.start(hosts.b, WORKER, tmp_path / 'worker.log')
    assert wait_for(lambda: _remote(hosts), 90), (tmp_path / 'server.log').read_text()[-3000:]
    assert wait_for(lambda: [w for w in _workers(hosts) or [] if not w['remote'] and w['state'] == 'ready'], 60)
    stop_file = tmp_path / 'stop'
    traffic = hosts.start(hosts.a, [sys.executable, '-c', TRAFFIC, str(stop_file)], tmp_path / 'traffic.log')
    served_again = {}
    try:
        for seconds in (3, 8, 30):
            # Mid-traffic: the remote worker holds batches (it has served some since the last cut).
            before = (_remote(hosts) or {'batches': 0})['batches']
            assert wait_for(lambda: _remote(hosts, before + 3), 60), f'no work for the remote worker before {seconds}s'
            hosts.link_b(up=False)
            wait_for(lambda: False, seconds, every=0.2)
            hosts.drop_connections(hosts.b, PORT_WORKER_SINK)  # results sent during the cut are gone
            hosts.link_b(up=True)
            after = (_remote(hosts) or {'batches': 0})['batches']
            served_again[seconds] = bool(wait_for(lambda: _remote(hosts, after + 3), 60))
    finally:
        stop_file.touch()
    assert traffic.wait(CLIENT_TIMEOUT_MS / 1000 + 60) == 0, (tmp_path / 'traffic.log').read_text()[-3000:]
    outcome = json.loads((tmp_path / 'traffic.log').read_text().strip().splitlines()[-1])
    assert outcome['errors'] == [], outcome['errors'][:5]
    assert outcome['wrong'] == 0
    assert outcome['ok'] == outcome['sent'] > 3 * CLIENTS
    # Its lost batches went elsewhere, and it got its credit back: it serves again after each cut.
    assert served_again == {3: True, 8: True, 30: True}, (tmp_path / 'worker.log').read_text()[-3000:]
    assert hosts.stop(remote) == 0
    assert hosts.stop(server) == 0
