"""Ventilator: a real Ventilator.run() in a thread (see ventilator_support.py), with the real Scheduler,
Supervisor and WorkerRegistry behind it. The test is the client, the workers and the sink; one test
has a real Worker with the fake engine join. Every wait is a bounded poll."""
import logging
import threading

import numpy as np
import pytest
import zmq

from bert_serving.client.protocol import MAX_IDENTITY_BYTES, Command, ErrorCode
from bert_serving.server.config import EngineConfig
from bert_serving.server.engine.fake import FakeEngine
from bert_serving.server.pipeline import messages as msg
from bert_serving.server.pipeline.worker import Worker, WorkerConfig

from ventilator_support import FINGERPRINT, SECRET, WAIT_SECONDS, StandInProcess, wait_until

# -- clients -----------------------------------------------------------------------------------


def test_identities_no_reply_can_reach_are_refused_counted_and_never_answered(ventilator):
    """Empty, over 256 bytes, or holding a NUL (which ends a reply topic): refused before parsing,
    logged, counted in the status, and nothing reaches the sink for them. 256 bytes is served."""
    v = ventilator(num_worker=0)
    for identity in (b'x' * (MAX_IDENTITY_BYTES + 1), b'a\x00b', b''):
        v.send(identity, Command.SHOW_CONFIG)
    v.send(b'y' * MAX_IDENTITY_BYTES, Command.SHOW_CONFIG, req_id=2)
    first = v.sink_message()  # one connection keeps its order: the refused ones came before
    assert (first.kind, first.client, first.req_id) == (msg.JSON_REPLY, b'y' * MAX_IDENTITY_BYTES, 2)
    assert v.status()['num_refused_identity'] == 3
    refusals = [m for m in v.records.messages() if m.startswith('refused a request')]
    assert len(refusals) == 3 and 'identity of 257 bytes' in refusals[0]


@pytest.mark.parametrize('payload, msg_len, fragment', [
    (b'not json', 1, 'not valid JSON'),
    (b'["a", "b"]', 3, 'msg_len'),
    (b'[1, 2]', 2, 'texts[0]'),
    (b'["' + b'w' * 10_001 + b'"]', 1, 'exceeds the server limit of 10000 bytes'),
])
def test_a_bad_request_is_answered_with_an_error_frame(ventilator, payload, msg_len, fragment):
    v = ventilator(num_worker=0)
    v.send(b'alice', payload, req_id=5, msg_len=msg_len)
    fail = v.sink_message()
    assert (fail.kind, fail.client, fail.req_id, fail.serial) == (msg.FAIL, b'alice', 5, None)
    assert fail.code == ErrorCode.BAD_REQUEST and fragment in fail.message, fail.message
    assert v.scheduler.requests == {}


def test_anonymous_garbage_is_dropped_and_the_loop_serves_on(ventilator):
    """Messages with no readable identity and request id cannot be answered: dropped, logged."""
    v = ventilator(num_worker=0)
    for frames in ([b'only-one-frame'], [b'id', b'["a"]', b'not-a-number', b'1'], [b'a', b'b', b'c', b'd', b'e']):
        v.client.send_multipart(frames)
    status = v.status()  # the first thing at the sink: nothing came for the garbage
    assert status['num_refused_identity'] == 0
    assert sum('malformed request' in m for m in v.records.messages()) == 3


def test_terminate_from_a_client_stops_the_loop(ventilator):
    v = ventilator(num_worker=0)
    v.send(b'admin', Command.TERMINATE)
    v.thread.join(WAIT_SECONDS)
    assert not v.thread.is_alive() and v.server.stopping and v.server.failure is None


@pytest.mark.parametrize('exitcode, failed', [(0, False), (-15, False), (-2, False), (1, True), (-9, True)])
def test_a_sink_that_leaves_with_a_stop_is_no_failure(ventilator, exitcode, failed):
    """Ctrl-C in a terminal, or kill -TERM of the process group, stops the sink with the server: the
    server then exits as stopped (0), not as failed (1) "because the SINK process died". A sink that
    crashed or was killed while the server stopped is still a failure, with its exit code."""
    v = ventilator(num_worker=0)
    sink = StandInProcess('SINK')
    v.supervisor.add_service(sink, 'see the SINK log')
    v.server.request_stop()
    sink.exitcode = exitcode
    v.thread.join(WAIT_SECONDS)
    assert not v.thread.is_alive()
    if failed:
        assert f'the SINK process died (exit code {exitcode})' in v.server.failure
    else:
        assert v.server.failure is None


def test_a_sink_that_dies_while_serving_stops_the_server_with_the_reason(ventilator):
    v = ventilator(num_worker=0)
    sink = StandInProcess('SINK')
    v.supervisor.add_service(sink, 'see the SINK log')
    sink.exitcode = 0
    v.thread.join(WAIT_SECONDS)
    assert not v.thread.is_alive() and v.server.failure == 'the SINK process died (exit code 0): see the SINK log'


def test_stopping_fails_what_is_left_with_shutting_down(ventilator):
    """No worker ever takes the request; with -drain_timeout 0 a stop fails it at once, with a reason."""
    v = ventilator(num_worker=0, drain_timeout=0.0)
    v.encode(b'carol', ['never computed'], req_id=7)
    serial = v.sink_message(msg.REGISTER).serial
    v.server.request_stop()
    fail = v.sink_message(msg.FAIL)
    assert (fail.client, fail.req_id, fail.serial, fail.code) == (b'carol', 7, serial, ErrorCode.SHUTTING_DOWN)
    assert 'server shutting down' in fail.message


def test_requests_read_together_are_registered_and_a_bad_one_among_them_fails_alone(ventilator):
    """Requests the ventilator reads in one turn go to the sink in one REGISTER (the stand-in sink
    splits it): a malformed one among them is refused on its own, the others all registered."""
    v = ventilator(num_worker=0)
    for i in range(1, 6):
        if i == 3:
            v.send(b'bad', b'{"texts": 5}', req_id=3)
        else:
            v.encode(b'c%d' % i, ['text %d' % i], req_id=i)
    got = [v.sink_message() for _ in range(5)]  # the FAIL goes at once, the REGISTER after the read
    assert {(m.client, m.req_id) for m in got if m.kind == msg.REGISTER} == {(b'c1', 1), (b'c2', 2), (b'c4', 4),
                                                                            (b'c5', 5)}
    [fail] = [m for m in got if m.kind == msg.FAIL]
    assert (fail.client, fail.req_id, fail.serial, fail.code) == (b'bad', 3, None, ErrorCode.BAD_REQUEST)


def test_the_sinks_count_of_dropped_worker_messages_reaches_the_status(ventilator):
    v = ventilator(num_worker=0)
    v.feedback.send_multipart(msg.pack_finished([], dropped=4))
    # Feedback and requests come on two sockets: ask until the count shows.
    assert wait_until(lambda: v.status()['num_dropped_worker_message'] == 4)


# -- workers -----------------------------------------------------------------------------------


def test_a_registered_worker_gets_pieces_tagged_for_its_channel_within_its_credit(ventilator):
    v = ventilator(num_worker=1)
    worker = v.dealer(b'worker-0-0')
    v.join(worker, credit=1)
    assert v.server.is_ready.is_set()
    v.encode(b'alice', ['one two', 'three'], req_id=3)
    register = v.sink_message(msg.REGISTER)
    assert (register.client, register.req_id, register.n) == (b'alice', 3, 2)
    batch_id, pieces = v.reply(worker)
    assert sorted(r for p in pieces for r in p.rows) == [0, 1]
    assert {t for p in pieces for t in p.texts} == {'one two', 'three'}
    for p in pieces:
        assert (p.client, p.req_id, p.serial) == (b'alice', 3, register.serial)
        assert p.tag == msg.piece_tag(SECRET, msg.LOCAL_CHANNEL, b'alice', 3, register.serial, p.piece_id)

    # Its one credit is taken: the next request waits for the DONE.
    v.encode(b'bob', ['four'], req_id=1)
    v.status()  # bob's request was read, and that turn's dispatch is over
    worker.send_multipart(msg.pack_heartbeat(batch_id, holds=[batch_id]))
    pong = v.reply(worker)  # a BATCH sent in that turn would have come first
    assert (pong.kind, pong.mark) == (msg.PONG, batch_id)
    worker.send_multipart(msg.pack_done(batch_id))
    next_id, (piece,) = v.reply(worker)
    assert next_id > batch_id and (piece.client, piece.texts) == (b'bob', ['four'])


def test_heartbeats_get_pongs_that_mark_the_last_batch_sent(ventilator):
    """While loading, a PONG without a mark; once ready, the id of the last batch sent to it (0: none)."""
    v = ventilator(num_worker=1)
    worker = v.dealer(b'worker-0-0')
    v.hello(worker)
    assert v.reply(worker).kind == msg.WELCOME
    worker.send_multipart(msg.pack_heartbeat(None))
    assert v.reply(worker) == msg.Control(msg.PONG)
    worker.send_multipart(msg.pack_ready(2, 4242, 'cpu'))
    worker.send_multipart(msg.pack_heartbeat(None, holds=[]))
    assert v.reply(worker) == msg.Control(msg.PONG, mark=0)
    v.encode(b'alice', ['hello'])
    batch_id, _ = v.reply(worker)
    worker.send_multipart(msg.pack_heartbeat(batch_id, holds=[batch_id]))
    assert v.reply(worker) == msg.Control(msg.PONG, mark=batch_id)


def test_workers_the_ventilator_does_not_know_get_nothing(ventilator):
    """On the local socket only the supervisor's identities join, and a stranger's READY and heartbeat
    get no answer; on the remote port an unknown worker is told to register again, and a local
    worker's identity is refused. None of them is in the status or gets a batch."""
    v = ventilator(num_worker=1, remote=True)
    stranger = v.dealer(b'stranger')
    v.hello(stranger)
    reject = v.reply(stranger)
    assert reject.kind == msg.REJECT and 'unknown local worker' in reject.reason
    stranger.send_multipart(msg.pack_ready(2, 1, 'cpu'))
    stranger.send_multipart(msg.pack_heartbeat(None, holds=[]))
    v.hello(stranger)
    assert v.reply(stranger).kind == msg.REJECT  # in order: READY and HEARTBEAT had no answer

    unknown = v.dealer(b'remote-unknown', remote=True)
    for frames in (msg.pack_ready(2, 1, 'cpu'), msg.pack_heartbeat(None, holds=[]), msg.pack_done(1)):
        unknown.send_multipart(frames)
        assert v.reply(unknown) == msg.Control(msg.REGISTER_AGAIN)

    poser = v.dealer(b'worker-0-0', remote=True)
    v.hello(poser, local=False)
    reject = v.reply(poser)
    assert reject.kind == msg.REJECT and 'belongs to a local worker' in reject.reason

    v.encode(b'alice', ['queued, never sent'])
    assert v.status()['workers'] == []
    assert not v.server.is_ready.is_set()


def test_a_worker_with_another_fingerprint_is_rejected_with_the_reason(ventilator):
    v = ventilator(num_worker=1)
    worker = v.dealer(b'worker-0-0')
    v.hello(worker, fingerprint='0' * 64)
    reject = v.reply(worker)
    assert reject.kind == msg.REJECT and '-model_dir' in reject.reason
    assert any('refused a worker' in m for m in v.records.messages())


def _two_workers(v) -> dict:
    """worker-0-0 and worker-1-0 joined with a credit of 1: identity -> DEALER."""
    workers = {identity: v.dealer(identity) for identity in (b'worker-0-0', b'worker-1-0')}
    for dealer in workers.values():
        v.join(dealer, credit=1)
    return workers


def _holder(workers: dict) -> bytes:
    """The one worker a batch was sent to."""
    poller = zmq.Poller()
    for dealer in workers.values():
        poller.register(dealer, zmq.POLLIN)
    ready = dict(poller.poll(WAIT_SECONDS * 1000))
    (holder,) = [identity for identity, dealer in workers.items() if dealer in ready]
    return holder


def test_a_dead_workers_unconfirmed_piece_goes_to_the_other_and_it_is_replaced(ventilator):
    v = ventilator(num_worker=2)
    workers = _two_workers(v)
    v.encode(b'alice', ['one input'], req_id=4)
    holder = _holder(workers)
    (other,) = set(workers) - {holder}
    _, (piece,) = v.reply(workers[holder])

    v.processes[holder].exitcode = -9  # the supervisor finds it dead at its next check
    _, (again,) = v.reply(workers[other])
    assert (again.piece_id, again.rows, again.texts, again.attempt) == (piece.piece_id, [0], ['one input'], 1)
    replacement = holder[:-1] + b'1'  # worker-N-0 -> worker-N-1, the next generation
    assert v.spawned == [b'worker-0-0', b'worker-1-0', replacement]
    assert holder not in v.scheduler.workers and holder not in v.ventilator.registry.known
    label = holder.decode().split('-')[1]
    assert any(f'WORKER-{label} died (exit code -9); starting a new one' in m
               for m in v.records.messages(logging.ERROR))
    status = v.status()
    assert (status['lost_workers'], status['worker_restarts'], status['num_worker_restart']) == (
        {'died': 1}, {'died': 1}, 1)


def test_a_request_whose_workers_are_lost_twice_fails_as_worker_lost(ventilator):
    """Its FAIL names the outcome for the sink's metrics: the error code alone (failed) would not."""
    v = ventilator(num_worker=2)
    workers = _two_workers(v)
    v.encode(b'erin', ['crashes every worker'], req_id=6)
    for _ in range(2):  # whoever holds it dies, twice
        holder = _holder(workers)
        v.reply(workers[holder])
        v.processes[holder].exitcode = -9
        del workers[holder]
    fail = v.sink_message(msg.FAIL)
    assert (fail.client, fail.req_id, fail.code, fail.outcome) == (b'erin', 6, ErrorCode.FAILED, 'worker_lost')
    assert 'lost twice' in fail.message


def test_heartbeats_say_how_busy_each_worker_is(ventilator):
    v = ventilator(num_worker=1)
    dealer = v.dealer(b'worker-0-0')
    v.join(dealer, credit=1)
    for busy in (0.0, 0.5):
        dealer.send_multipart(msg.pack_heartbeat(None, holds=[], busy=busy))
        assert v.reply(dealer).kind == msg.PONG
    [worker] = v.status()['workers']
    assert (worker['name'], worker['state'], worker['busy_seconds']) == ('WORKER-0', 'ready', 0.5)
    assert 0 < worker['busy_fraction'] <= 1


@pytest.fixture
def fake_worker_env(monkeypatch):
    # In a thread of the test process: no watchdog (it ends the process after a stop), and the
    # variables Worker.run sets are restored after the test.
    monkeypatch.setattr(Worker, '_watchdog', lambda self: None)
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '-1')
    monkeypatch.setenv('TF_CPP_MIN_LOG_LEVEL', '3')


def test_a_real_worker_with_the_fake_engine_serves_a_request_through_it(ventilator, fake_worker_env):
    """A Worker (pipeline/worker.py, fake engine) joins the local socket as the supervisor's
    worker-0-0: the server turns ready, and the results it pushes to the sink are the fake's
    vectors for each row, tagged for the local channel."""
    v = ventilator(num_worker=1)
    stop = threading.Event()
    settings = WorkerConfig(name='WORKER-0', identity='worker-0-0', fingerprint=FINGERPRINT, device_id=-1,
                              backend_addr=v.addresses.backend, credit=2, max_batch_size=8)
    worker = Worker(EngineConfig(engine='fake'), settings, None, stop)
    thread = threading.Thread(target=worker.run, name='worker', daemon=True)
    thread.start()
    try:
        assert v.server.is_ready.wait(WAIT_SECONDS), 'the worker never became ready'
        texts = [f'sentence number {i} of a request' for i in range(11)]
        v.encode(b'dave', texts, req_id=8)
        serial = v.sink_message(msg.REGISTER).serial
        rows = {}
        while len(rows) < len(texts):
            result = v.sink_message(msg.RESULT)
            assert result.tag == msg.piece_tag(SECRET, msg.LOCAL_CHANNEL, b'dave', 8, serial, result.piece_id)
            rows.update(zip(result.rows, result.array))
        fake = FakeEngine(EngineConfig(engine='fake'))
        np.testing.assert_allclose(np.stack([rows[i] for i in range(len(texts))]),
                                   fake.run(fake.featurize(texts)), rtol=0, atol=1e-6)
    finally:
        stop.set()
        thread.join(WAIT_SECONDS)
    assert not thread.is_alive(), 'the worker did not stop'


# -- remote workers with CurveZMQ ----------------------------------------------------------------


def test_a_remote_workers_identity_spoken_with_another_key_is_dropped(curve, ventilator):
    """Worker a joins with its key; b, an authorized worker too, takes over a's identity (the
    ROUTER hands an identity over to a reconnecting peer). What b says in a's name comes with b's
    key, not the channel a registered on: dropped, logged, never answered."""
    v = ventilator(num_worker=0, remote=True, ctx=curve.ctx, auth=curve.auth, secure=curve.secure)
    keys = curve.keys
    a = v.dealer(b'remote-a', remote=True, curve=keys['a'])
    v.join(a, credit=1, remote=True)
    info = v.ventilator.registry.get(b'remote-a', remote=True)
    assert info.channel == msg.remote_channel(keys['a'].public.encode())

    b = v.dealer(b'remote-a', remote=True, curve=keys['b'])
    b.send_multipart(msg.pack_heartbeat(None, holds=[]))
    assert wait_until(lambda: any('from another Curve key' in m for m in v.records.messages()))
    assert not b.poll(100), 'the forged HEARTBEAT was answered'
    assert v.ventilator.registry.get(b'remote-a', remote=True) is info
