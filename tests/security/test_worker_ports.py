"""The worker ports: -port_worker (the ventilator's ROUTER) and -port_worker_sink (the sink's results PULL).

Workers are not clients. With -auth_dir, a client's key running ``bert-serving-worker`` never gets a
batch (its key is not in authorized_workers/), and a worker's key gets nothing on the client ports.
On the results port, a RESULT or FAIL counts only with the tag of a piece that was sent to that
worker: forged ones, for any (client, req_id, serial, piece), are dropped and counted, and the
client they aim at gets its true vectors.
"""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
import zmq

from bert_serving.client import BertClient, BertTimeoutError
from bert_serving.client.protocol import ErrorCode
from bert_serving.server.pipeline import messages as msg

from security_support import WORKER_CMD, curve_socket, key_files
from service_support import FAKE, kill_tree, sentence, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

JOIN_SECONDS = 30
VICTIM = b'victim-5e2b'


def _remote_workers(bc) -> list:
    return [w for w in bc.server_status['workers'] if w['remote']]


def _start_worker(port_worker: int, log, keys=None, name=None) -> subprocess.Popen:
    flags = ['-engine', 'fake', '-cpu', '-ip', '127.0.0.1', '-port_worker', str(port_worker), '-server_timeout', '3']
    if keys is not None:
        files = key_files(keys, name)
        flags += ['-server_key', files['server_key'], '-client_key', files['client_key']]
    with open(log, 'w') as out:
        return subprocess.Popen([*WORKER_CMD, *flags], stdout=out, stderr=subprocess.STDOUT)


def test_a_client_key_cannot_serve_as_a_worker_nor_a_worker_key_as_a_client(launch, keys, pick_port, tmp_path,
                                                                            fake_vectors):
    port_worker = pick_port()
    flags = ['-num_worker', '1', '-auth_dir', str(keys / 'dir'), '-port_worker', str(port_worker),
             '-port_worker_sink', str(pick_port())]  # not port_worker + 1: another process may hold it
    with launch(FAKE, flags) as running:
        impostor = _start_worker(port_worker, tmp_path / 'impostor.log', keys, 'alice')
        try:
            with running.client(**key_files(keys, 'alice')) as alice:
                texts = [sentence(i) for i in range(40)]
                for _ in range(10):  # work the impostor would get if it were let in
                    np.testing.assert_allclose(alice.encode(texts), fake_vectors.many(texts), atol=1e-5)
                assert not wait_until(lambda: _remote_workers(alice), 5), 'a client key joined as a worker'
                # The real worker key joins (the control: the port works).
                worker = _start_worker(port_worker, tmp_path / 'worker.log', keys, 'worker')
                try:
                    assert wait_until(lambda: [w for w in _remote_workers(alice) if w['state'] == 'ready'],
                                      JOIN_SECONDS), (tmp_path / 'worker.log').read_text()[-2000:]
                finally:
                    worker.terminate()
                    worker.wait(30)
        finally:
            kill_tree(impostor)
        log = (tmp_path / 'impostor.log').read_text()
        assert 'ready' not in log and 'registered' not in log, log[-2000:]
        # A worker key on the client ports: the handshake never comes back.
        with pytest.raises(BertTimeoutError):
            BertClient(port=running.port, port_out=running.port_out, timeout=1500, **key_files(keys, 'worker'))


def _forgeries(serials, pieces, req_ids):
    """RESULTs of garbage and FAILs for every guess of (req_id, serial, piece), for VICTIM."""
    for req_id in req_ids:
        for serial in serials:
            for piece_id in pieces:
                p = msg.Piece(VICTIM, req_id, [0], ['x'], serial=serial, piece_id=piece_id, tag='0' * 32)
                yield msg.pack_result(p, np.full((1, 8), 666.0, np.float32), None)
                yield msg.pack_piece_fail(p, 'cancelled by a forger', ErrorCode.FAILED)


@pytest.mark.parametrize('secured', [False, True], ids=['plain', 'auth_dir'])
def test_forged_results_and_failures_are_dropped_and_counted(launch, keys, pick_port, fake_vectors, secured):
    port_worker = pick_port()
    port_worker_sink = pick_port()
    flags = ['-num_worker', '1', '-port_worker', str(port_worker), '-port_worker_sink', str(port_worker_sink)]
    if secured:  # the forger holds a valid worker key
        flags += ['-auth_dir', str(keys / 'dir')]
    client_keys = key_files(keys, 'alice') if secured else {}
    with launch(FAKE, flags) as running, zmq.Context() as ctx:
        forger = curve_socket(ctx, zmq.PUSH, keys, 'worker') if secured else ctx.socket(zmq.PUSH)
        forger.setsockopt(zmq.LINGER, 5000)
        forger.connect(f'tcp://127.0.0.1:{port_worker_sink}')
        forged = list(_forgeries(range(1, 21), range(1, 21), range(1, 4)))
        for frames in forged:
            forger.send_multipart(frames)
        with running.client(**client_keys) as monitor:
            assert wait_until(lambda: monitor.server_status['num_dropped_worker_message'] >= len(forged), 30), \
                monitor.server_status['num_dropped_worker_message']
            with running.client(identity=VICTIM, **client_keys) as victim:
                for i in range(3):
                    texts = [sentence(10 * i + k) for k in range(1 + i)]
                    np.testing.assert_allclose(victim.encode(texts), fake_vectors.many(texts), atol=1e-5)
            status = monitor.server_status
        forger.close()
    print(f'{len(forged)} forged messages, {status["num_dropped_worker_message"]} dropped')
    assert status['num_dropped_worker_message'] == len(forged)
