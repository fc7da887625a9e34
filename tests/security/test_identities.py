"""Huge identities: a raw peer sends 300 requests whose identity frame is 1 MiB (the 1.10 wire format
allows it). Each is refused and logged; no table keeps it, so no server process grows; a normal client
is served all along. Our client refuses such an identity before it sends anything."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
import zmq

from bert_serving.client import BertClient, ConfigError
from bert_serving.client.protocol import pack_request

from security_support import SERVER_CMD, rss_mib, server_pids, wait_port
from service_support import kill_tree, sentence, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

COUNT = 300
IDENTITY_BYTES = 1 << 20
GROWTH_LIMIT_MIB = 50


@pytest.fixture
def cli_server(pick_port, tmp_path):
    """``bert-serving-start -engine fake`` as a process of its own, so its memory can be read."""
    port, port_out = pick_port(), pick_port()
    log = tmp_path / 'server.log'
    with open(log, 'w') as out:
        proc = subprocess.Popen([*SERVER_CMD, '-engine', 'fake', '-cpu', '-num_worker', '1', '-port', str(port),
                                 '-port_out', str(port_out)], stdout=out, stderr=subprocess.STDOUT)
    try:
        assert wait_port(port_out), log.read_text()[-2000:]
        yield proc, port, port_out, log
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        finally:
            kill_tree(proc)


def test_huge_identities_are_refused_and_kept_nowhere(cli_server, fake_vectors):
    proc, port, port_out, log = cli_server
    with BertClient(port=port, port_out=port_out, timeout=20000) as bc:
        np.testing.assert_allclose(bc.encode([sentence(1)]), fake_vectors.many([sentence(1)]), atol=1e-5)
        assert wait_until(lambda: len(server_pids(proc.pid)) >= 3, 30)  # front, sink, worker
        before = {pid: rss_mib(pid) for pid in server_pids(proc.pid)}
        with zmq.Context() as ctx:
            push = ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 5000)
            push.connect(f'tcp://127.0.0.1:{port}')
            for i in range(COUNT):
                identity = b'%08d' % i + b'x' * (IDENTITY_BYTES - 8)
                push.send_multipart(pack_request(identity, b'["a sentence"]', 1, 1))
                if i % 50 == 0:  # interleaved: the normal client is served meanwhile
                    np.testing.assert_allclose(bc.encode([sentence(i)]), fake_vectors.many([sentence(i)]), atol=1e-5)
            push.close()
        assert wait_until(lambda: bc.server_status['num_refused_identity'] >= COUNT, 60), bc.server_status
        after = {pid: rss_mib(pid) for pid in server_pids(proc.pid)}
        status = bc.server_status
    growth = {pid: after[pid] - before[pid] for pid in before if pid in after}
    print(f'RSS growth over {COUNT} identities of {IDENTITY_BYTES} bytes, MiB: '
          + ', '.join(f'{pid}: {g:+.1f}' for pid, g in growth.items()))
    assert all(g < GROWTH_LIMIT_MIB for g in growth.values()), growth
    assert status['statistic']['num_total_client'] <= 2  # the huge identities are in no table
    assert 'refused a request' in log.read_text()


@pytest.mark.parametrize('identity', [b'x' * 257, b'with\x00nul'])
def test_our_client_refuses_an_identity_the_server_cannot_answer(identity):
    with pytest.raises(ConfigError, match='identity must be 1-256 bytes without NUL') as info:
        BertClient(identity=identity, port=1, port_out=2, timeout=100)
    assert isinstance(info.value, ValueError)  # as before
