"""``bert-serving-worker`` (pipeline/remote.py, run_remote): its start-up path with the fake engine
(no TensorFlow, no graph), against a real Ventilator in a thread (ventilator_support.py) that takes
remote workers on -port_worker. run_remote runs on the test's main thread, as it sets a SIGINT
handler; a helper thread drives the server side and sets the stop event, so every run ends within a
bounded time."""
import os
import signal
import socket
import threading

import numpy as np
import pytest

from bert_serving.server.args import get_worker_parser
from bert_serving.server.config import EngineConfig
from bert_serving.server.engine.fake import FakeEngine
from bert_serving.server.engine.graph import fingerprint
from bert_serving.server.pipeline import messages as msg
from bert_serving.server.pipeline import remote
from bert_serving.server.pipeline.worker import Worker

from ventilator_support import SECRET, WAIT_SECONDS, wait_until


@pytest.fixture
def stop(monkeypatch):
    """The stop event run_remote waits on, in place of the SIGTERM handler (which would also make the
    kernel signal the test process when its parent dies). The SIGINT handler it sets is restored."""
    event = threading.Event()
    monkeypatch.setattr(remote, 'install_stop_handler', lambda: event)
    monkeypatch.setattr(Worker, '_watchdog', lambda self: None)  # it ends the process some seconds after a stop
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '-1')  # Worker.run sets both; restored after the test
    monkeypatch.setenv('TF_CPP_MIN_LOG_LEVEL', '3')
    for name in ('BERT_SERVING_SERVER_KEY', 'BERT_SERVING_CLIENT_KEY'):
        monkeypatch.delenv(name, raising=False)
    sigint = signal.getsignal(signal.SIGINT)
    yield event
    signal.signal(signal.SIGINT, sigint)


def worker_args(v, *flags):
    return get_worker_parser().parse_args(['-engine', 'fake', '-cpu', '-ip', '127.0.0.1',
                                           '-port_worker', str(v.addresses.port_worker), *flags])


class Driver(threading.Thread):
    """Runs ``steps()`` beside run_remote, then sets ``stop`` whatever happened (every wait in ``steps``
    is bounded, so run_remote always returns); an assertion error in ``steps`` is kept for the test."""

    def __init__(self, steps, stop: threading.Event):
        super().__init__(name='driver', daemon=True)
        self.steps, self.stop, self.error = steps, stop, None

    def run(self):
        try:
            self.steps()
        except BaseException as e:  # noqa: BLE001 - re-raised on the test's thread
            self.error = e
        finally:
            self.stop.set()

    def check(self):
        self.join(WAIT_SECONDS)
        if self.error is not None:
            raise self.error


def join_and_serve(v, stop, extra=(), key=b''):
    """The worker prepares nothing (fake engine), says HELLO with the fingerprint of its flags, joins
    as REMOTE-host-pid on the channel of its Curve ``key``, serves a request whose results reach the
    sink's -port_worker_sink tagged for that channel, and returns 0 when stopped."""
    args = worker_args(v, *extra)
    v.ventilator.registry.fingerprint = fingerprint(EngineConfig.from_namespace(args), None)  # the server's flags
    name = f'REMOTE-{socket.gethostname()}-{os.getpid()}'
    texts = [f'remote sentence {i}' for i in range(5)]
    rows = {}

    def serve():
        assert wait_until(lambda: [w['state'] for w in v.ventilator.registry.status({})] == ['ready'])
        (info,) = v.ventilator.registry.known.values()
        assert (info.name, info.remote, info.channel) == (name, True, msg.remote_channel(key))
        v.encode(b'erin', texts, req_id=2)
        serial = v.sink_message(msg.REGISTER).serial
        while len(rows) < len(texts):
            result = v.sink_message(msg.RESULT, sock=v.remote_sink)
            assert result.tag == msg.piece_tag(SECRET, msg.remote_channel(key), b'erin', 2, serial, result.piece_id)
            rows.update(zip(result.rows, result.array))

    driver = Driver(serve, stop)
    driver.start()
    assert remote.run_remote(args) == 0
    driver.check()
    fake = FakeEngine(EngineConfig(engine='fake'))
    np.testing.assert_allclose(np.stack([rows[i] for i in range(len(texts))]), fake.run(fake.featurize(texts)),
                               rtol=0, atol=1e-6)


def test_a_remote_worker_joins_serves_and_stops(ventilator, stop):
    join_and_serve(ventilator(num_worker=0, remote=True), stop)


def test_a_remote_worker_with_key_files_joins_on_its_keys_channel(curve, ventilator, stop):
    """-server_key and -client_key: both of the worker's sockets speak Curve, and its channel is its key."""
    v = ventilator(num_worker=0, remote=True, ctx=curve.ctx, auth=curve.auth, secure=curve.secure,
                   client_keys=curve.keys['client'])
    join_and_serve(v, stop, curve.key_args('a'), curve.keys['a'].public.encode())


def test_a_remote_worker_with_other_flags_is_refused_and_exits_3(ventilator, stop):
    """The server's fingerprint is of other output flags: REJECT, and run_remote returns 3 (the
    code bert-serving-worker exits with) without being stopped."""
    v = ventilator(num_worker=0, remote=True,
                   fingerprint=fingerprint(EngineConfig(engine='fake', pooling_strategy='CLS_TOKEN'), None))
    timer = threading.Timer(WAIT_SECONDS, stop.set)  # a worker never answered would register forever
    timer.start()
    try:
        assert remote.run_remote(worker_args(v)) == 3
    finally:
        timer.cancel()
    assert not stop.is_set()
    assert any('refused a worker' in m and 'fingerprint' in m for m in v.records.messages())
    assert v.ventilator.registry.known == {}
