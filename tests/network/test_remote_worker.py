"""A server on host A and a bert-serving-worker on host B (two network namespaces joined by veth):
B's worker joins over TCP and serves; killed or cut off mid-traffic it loses no request, A's own
worker serves the rest, and B's worker comes back when the link does."""
from __future__ import annotations

import signal
import sys
import textwrap

import pytest

from netns_support import ADDR_A, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PORT, PORT_OUT, PORT_WORKER = 5555, 5556, 5557
FAKE = ['-engine', 'fake', '-cpu', '-max_batch_size', '4']
SERVER = [sys.executable, '-c', 'import sys; from bert_serving.server.cli import main; sys.exit(main())',
          *FAKE, '-num_worker', '1', '-port', str(PORT), '-port_out', str(PORT_OUT), '-port_worker', str(PORT_WORKER),
          '-heartbeat_timeout', '3']
WORKER = [sys.executable, '-c', 'import sys; from bert_serving.server.cli import worker; sys.exit(worker())',
          *FAKE, '-ip', ADDR_A, '-port_worker', str(PORT_WORKER), '-server_timeout', '3']

STATUS = textwrap.dedent(f'''
    import json
    from bert_serving.client import BertClient
    with BertClient(ip='127.0.0.1', port={PORT}, port_out={PORT_OUT}, timeout=5000) as bc:
        print(json.dumps(bc.server_status['workers']))
''')

# Sends requests of 1 to 12 known sentences for a while, 20 ms apart (a steady stream, not a busy
# loop that would take the CPU the rest of the suite runs on); prints what became of each.
TRAFFIC = textwrap.dedent(f'''
    import json, sys, time
    import numpy as np
    from bert_serving.client import BertClient
    from bert_serving.server.config import EngineConfig
    from bert_serving.server.engine.fake import FakeEngine
    seconds = float(sys.argv[1])
    fake = FakeEngine(EngineConfig(engine='fake'))
    outcome = {{'sent': 0, 'ok': 0, 'wrong': 0, 'errors': []}}
    deadline = time.monotonic() + seconds
    with BertClient(ip='127.0.0.1', port={PORT}, port_out={PORT_OUT}, timeout=30000) as bc:
        i = 0
        while time.monotonic() < deadline and i < 20000:
            texts = ['request %d sentence %d' % (i, j) for j in range(1 + i % 12)]
            i += 1
            outcome['sent'] += 1
            try:
                vectors = bc.encode(texts)
            except Exception as e:
                outcome['errors'].append(repr(e))
                continue
            outcome['ok' if np.allclose(vectors, fake.encode(texts)[0]) else 'wrong'] += 1
            time.sleep(0.02)
    print(json.dumps(outcome))
''')


def _workers(hosts):
    try:
        return hosts.python_json(hosts.a, STATUS, timeout=30)
    except Exception:  # not up yet
        return None


def _remote_ready(hosts, min_batches=0):
    workers = _workers(hosts) or []
    return [w for w in workers if w['remote'] and w['state'] == 'ready' and w['batches'] >= min_batches]


def test_remote_worker_serves_survives_kill_and_cut_link(hosts, tmp_path):
    server = hosts.start(hosts.a, SERVER, tmp_path / 'server.log')
    remote = hosts.start(hosts.b, WORKER, tmp_path / 'worker1.log')
    assert wait_for(lambda: _remote_ready(hosts), 90), (tmp_path / 'server.log').read_text()[-3000:]
    traffic = hosts.start(hosts.a, [sys.executable, '-c', TRAFFIC, '40'], tmp_path / 'traffic.log')

    # Both hosts do work.
    busy = wait_for(lambda: _remote_ready(hosts, min_batches=5), 30)
    assert busy and busy[0]['host'] != '', 'the remote worker did no work'
    # The local worker may join after the remote one has served a few batches (the remote one
    # waits for the server's port; the local one starts only once the server is up).
    assert wait_for(lambda: [w for w in _workers(hosts) or [] if not w['remote'] and w['state'] == 'ready'], 30), \
        'the local worker never became ready'

    # kill -9 on host B mid-traffic: A's worker serves the rest; a new B worker joins.
    hosts.stop(remote, signal.SIGKILL)
    assert wait_for(lambda: not _remote_ready(hosts), 20), 'the server never noticed the dead remote worker'
    remote = hosts.start(hosts.b, WORKER, tmp_path / 'worker2.log')
    assert wait_for(lambda: _remote_ready(hosts, min_batches=1), 60), 'the second remote worker never served'

    # Cut the cable mid-traffic, then restore it: the worker is declared lost, then comes back.
    hosts.link_b(up=False)
    assert wait_for(lambda: not _remote_ready(hosts), 20), 'a worker behind a cut link still counts as ready'
    hosts.link_b(up=True)
    back = wait_for(lambda: _remote_ready(hosts), 60)
    assert back, (tmp_path / 'worker2.log').read_text()[-3000:]

    assert traffic.wait(120) == 0, (tmp_path / 'traffic.log').read_text()[-3000:]
    outcome = __import__('json').loads((tmp_path / 'traffic.log').read_text().strip().splitlines()[-1])
    assert outcome['sent'] > 50
    assert outcome['wrong'] == 0
    assert outcome['errors'] == [], outcome['errors'][:5]
    assert outcome['ok'] == outcome['sent']
    assert hosts.stop(remote) == 0
    assert hosts.stop(server) == 0
