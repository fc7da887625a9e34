"""Worker: a real Worker.run() in a thread, between a ROUTER that stands in for the ventilator and a
PULL that stands in for the sink. Its engine is the fake, whose featurize the test can hold: the
heartbeats must go on meanwhile, naming every batch the worker holds. Every wait is a bounded poll."""
import threading
import time

import pytest
import zmq

from bert_serving.client.protocol import ErrorCode
from bert_serving.server.config import EngineConfig
from bert_serving.server.engine import fake
from bert_serving.server.errors import EncodeError
from bert_serving.server.pipeline import messages as msg
from bert_serving.server.pipeline.messages import Piece
from bert_serving.server.pipeline.worker import Worker, WorkerConfig

WAIT_SECONDS = 10.0  # bound of every wait; a heartbeat comes every HEARTBEAT_SECONDS
HOLD_WORD = '__hold__'
NO_ROOM_WORD = '__no_room__'


class HeldFakeEngine(fake.FakeEngine):
    """The fake, whose featurize waits for ``release`` on a piece with HOLD_WORD in it (a tokenizer
    busy with a very large batch)."""
    release = threading.Event()
    holding = threading.Event()  # set while a featurize waits
    threads: list = []  # (first text, name of the thread that tokenized it)

    def featurize(self, texts, is_tokenized=False):
        self.threads.append((texts[0] if texts else None, threading.current_thread().name))
        if any(isinstance(t, str) and HOLD_WORD in t for t in texts) and not self.release.is_set():
            self.holding.set()
            assert self.release.wait(WAIT_SECONDS), 'the test never released the featurize'
        if any(isinstance(t, str) and NO_ROOM_WORD in t for t in texts):  # what features.to_features raises
            raise EncodeError('max_seq_len=1 is too short: a sentence needs 2 tokens for [CLS] and [SEP]')
        return super().featurize(texts, is_tokenized)


class WorkerHarness:
    """The worker's neighbours: the ventilator's ROUTER and the sink's PULL."""

    def __init__(self, tmp_path):
        self.ctx = zmq.Context()
        self.router = self._socket(zmq.ROUTER)
        self.router.bind(f'ipc://{tmp_path}/backend')
        self.sink_addr = f'ipc://{tmp_path}/sink'
        self.sink = self._socket(zmq.PULL)
        self.unread: list = []  # pieces of a RESULT read, not taken yet
        self.sink.bind(self.sink_addr)
        settings = WorkerConfig(name='WORKER-T', identity='worker-t', fingerprint='f', device_id=-1,
                                  backend_addr=f'ipc://{tmp_path}/backend', credit=2, server_timeout=60.0)
        self.stop = threading.Event()
        self.worker = Worker(EngineConfig(engine='fake'), settings, None, self.stop)
        self.thread = threading.Thread(target=self.worker.run, name='worker', daemon=True)
        self.identity = b''

    def _socket(self, kind):
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        return sock

    def start(self) -> None:
        self.thread.start()
        hello = self.recv(msg.HELLO)
        self.identity = hello.identity
        self.router.send_multipart([self.identity] + msg.pack_welcome(self.sink_addr, None))
        self.recv(msg.READY)

    def recv(self, kind: bytes) -> msg.WorkerMessage:
        """The next message of this kind from the worker (others are dropped)."""
        while True:
            assert self.router.poll(WAIT_SECONDS * 1000), f'no {kind!r} from the worker'
            m = msg.unpack_worker(self.router.recv_multipart())
            if m.kind == kind:
                return m

    def heartbeat(self, mark: int) -> msg.WorkerMessage:
        """The next heartbeat, answered with a PONG carrying ``mark``."""
        m = self.recv(msg.HEARTBEAT)
        self.router.send_multipart([self.identity] + msg.pack_pong(mark))
        return m

    def send_batch(self, batch_id: int, texts) -> None:
        piece = Piece(b'client', batch_id, list(range(len(texts))), list(texts), serial=batch_id, piece_id=batch_id)
        self.router.send_multipart([self.identity] + msg.pack_batch(batch_id, [piece]))

    def close_sink(self) -> None:
        self.sink.close()

    def open_sink(self) -> None:
        self.sink = self._socket(zmq.PULL)
        self.sink.bind(self.sink_addr)

    def result(self) -> msg.SinkMessage:
        """The next piece's result or failure at the sink (a RESULT message may hold several)."""
        if not self.unread:
            assert self.sink.poll(WAIT_SECONDS * 1000), 'no result at the sink'
            self.unread = msg.unpack_sink(self.sink.recv_multipart())
        return self.unread.pop(0)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(WAIT_SECONDS)
        assert not self.thread.is_alive(), 'the worker did not stop'
        self.router.close()
        self.sink.close()
        self.ctx.term()


def _wait_until(condition) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, 'the condition never held'
        time.sleep(0.01)


@pytest.fixture
def harness(tmp_path, monkeypatch):
    # In-process: no watchdog (it ends the process some seconds after a stop), and the fake engine
    # whose featurize the test holds (create_engine reads it from the module when it runs).
    monkeypatch.setattr(Worker, '_watchdog', lambda self: None)
    monkeypatch.setattr(fake, 'FakeEngine', HeldFakeEngine)
    monkeypatch.setattr(HeldFakeEngine, 'release', threading.Event())
    monkeypatch.setattr(HeldFakeEngine, 'holding', threading.Event())
    monkeypatch.setattr(HeldFakeEngine, 'threads', [])
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '-1')  # Worker.run sets both; restored after the test
    monkeypatch.setenv('TF_CPP_MIN_LOG_LEVEL', '3')
    made = WorkerHarness(tmp_path)
    made.start()
    yield made
    HeldFakeEngine.release.set()
    made.close()


def test_heartbeats_go_on_and_name_a_batch_while_it_is_tokenized(harness):
    """A batch whose tokenizing takes long (up to 64 MiB of text) delays no heartbeat: each names it
    as held, not yet computed, and echoes the mark of the PONG that came after it."""
    harness.send_batch(1, [f'{HOLD_WORD} one two'])
    beats = []
    while sum(1 for b in beats if b.pong == 1) < 3:
        beats.append(harness.heartbeat(mark=1))
        assert len(beats) < 10, beats
    # A heartbeat sent before the PONG may precede the batch; the ones after it cannot.
    assert all(b.holds == (1,) and b.batch_id is None for b in beats if b.pong == 1)
    HeldFakeEngine.release.set()
    result = harness.result()
    assert (result.kind, result.piece_id, result.rows) == (msg.RESULT, 1, [0])
    assert harness.recv(msg.DONE).batch_id == 1
    after = harness.heartbeat(mark=1)
    assert (after.holds, after.batch_id, after.pong) == ((), None, 1)


def test_a_batch_the_worker_has_no_room_for_is_not_named(harness):
    """Batches beyond what it can queue (more than its credit: the server lost track) are dropped,
    and no heartbeat names them, so the server sends them again. The others are all computed."""
    harness.send_batch(1, [f'{HOLD_WORD} batch 1'])
    assert HeldFakeEngine.holding.wait(WAIT_SECONDS)
    harness.send_batch(2, [f'{HOLD_WORD} batch 2'])
    # Both threads hold one (the list also has the engine's warm-up).
    _wait_until(lambda: {f'{HOLD_WORD} batch 1', f'{HOLD_WORD} batch 2'} <= {t for t, _ in HeldFakeEngine.threads})
    for batch_id in range(3, 8):
        harness.send_batch(batch_id, [f'{HOLD_WORD} batch {batch_id}'])
    beat = harness.heartbeat(mark=7)
    while beat.pong != 7:
        beat = harness.heartbeat(mark=7)
    # One tokenized by the main thread (it was waiting), one in the featurize thread, credit + 2 = 4
    # queued behind them.
    assert beat.holds == (1, 2, 3, 4, 5, 6)
    HeldFakeEngine.release.set()
    assert sorted(harness.result().piece_id for _ in range(6)) == [1, 2, 3, 4, 5, 6]
    assert sorted(harness.recv(msg.DONE).batch_id for _ in range(6)) == [1, 2, 3, 4, 5, 6]
    assert harness.heartbeat(mark=7).holds == ()


def test_a_waiting_main_thread_tokenizes_a_batch_itself_and_a_busy_one_leaves_it_to_the_featurize_thread(
        harness):
    """A batch that comes while the main thread waits skips the featurize thread (one thread
    hand-off fewer); one that comes while the main thread is busy is prepared by the featurize
    thread meanwhile. Both are computed."""
    waiting = harness.worker.waiting_for_work
    assert waiting.wait(WAIT_SECONDS)
    harness.send_batch(1, ['alone'])
    assert harness.result().piece_id == 1
    assert harness.recv(msg.DONE).batch_id == 1
    assert waiting.wait(WAIT_SECONDS)  # set once the main thread waits again (it stays set while idle)
    harness.send_batch(2, [f'{HOLD_WORD} first'])
    assert HeldFakeEngine.holding.wait(WAIT_SECONDS)  # the main thread is busy with batch 2
    harness.send_batch(3, ['behind it'])
    beat = harness.heartbeat(mark=3)
    while beat.pong != 3:
        beat = harness.heartbeat(mark=3)
    assert beat.holds == (2, 3)
    HeldFakeEngine.release.set()
    assert sorted(harness.result().piece_id for _ in range(2)) == [2, 3]
    by_text = dict(HeldFakeEngine.threads)
    assert by_text['alone'] == by_text[f'{HOLD_WORD} first'] == 'worker'  # the harness runs Worker.run there
    assert by_text['behind it'] == 'featurize'


def test_the_inbox_gives_a_batch_to_the_main_thread_only_when_it_waits_with_nothing_queued():
    import queue

    from bert_serving.server.pipeline.worker import Inbox

    ahead, work = queue.Queue(maxsize=2), queue.Queue(maxsize=1)
    idle = [True]
    inbox = Inbox(ahead, work, lambda: idle[0])
    inbox.put_nowait((0, 1, ['frames'], 1.0))
    assert work.get_nowait() == (0, 1, ['frames'], 1.0, True) and ahead.empty()
    work.put_nowait((0, 9, [], 1.0, False))  # room for one: a second goes ahead even while idle
    inbox.put_nowait((0, 2, [], 2.0))
    idle[0] = False
    work.get_nowait()
    inbox.put_nowait((0, 3, [], 3.0))
    assert (inbox.qsize(), work.empty()) == (2, True)
    assert [inbox.get_nowait()[1] for _ in range(2)] == [2, 3]
    inbox.put_nowait((0, 4, [], 4.0))
    inbox.put_nowait((0, 5, [], 5.0))
    with pytest.raises(queue.Full):  # the io thread drops it, unnamed: the server sends it again
        inbox.put_nowait((0, 6, [], 6.0))


def test_heartbeats_name_the_batches_whose_results_have_not_left(harness):
    """Results wait in the worker while the sink cannot be reached (or a slow link takes them): the
    heartbeats say so after DONE, and stop once the results have left, so the server starts the
    delivery window only then."""
    harness.close_sink()
    harness.send_batch(1, ['no sink yet'] * 3000)  # 96 KB of results (pyzmq copies under 64 KB: gone at once)
    assert harness.recv(msg.DONE).batch_id == 1
    beat = harness.heartbeat(mark=1)
    assert (beat.holds, beat.sending) == ((), (1,))
    harness.open_sink()
    assert harness.result().piece_id == 1
    beats = [harness.heartbeat(mark=1)]
    while beats[-1].sending and len(beats) < 5:
        beats.append(harness.heartbeat(mark=1))
    assert (beats[-1].holds, beats[-1].sending) == ((), ())


def test_a_batch_s_pieces_reach_the_sink_in_few_messages(harness, monkeypatch):
    """The pieces of one model call go to the sink together, one RESULT up to RESULT_MESSAGE_BYTES of
    rows (then the next), each piece with its own rows and tag."""
    from bert_serving.server.pipeline import worker as worker_module
    row_bytes = 4 * fake.FAKE_WIDTH
    monkeypatch.setattr(worker_module, 'RESULT_MESSAGE_BYTES', 3 * row_bytes)  # a message per 3 rows or more
    pieces = [Piece(b'c%d' % i, 10 + i, list(range(n)), ['some words'] * n, serial=i, piece_id=100 + i, tag=f't{i}')
              for i, n in enumerate((1, 1, 2, 1))]
    harness.router.send_multipart([harness.identity] + msg.pack_batch(7, pieces))
    messages = []
    while sum(len(m) for m in messages) < len(pieces):
        assert harness.sink.poll(WAIT_SECONDS * 1000), 'no result at the sink'
        messages.append(msg.unpack_sink(harness.sink.recv_multipart()))
    assert [[m.piece_id for m in ms] for ms in messages] == [[100, 101, 102], [103]]  # cut after 4 rows, then 1
    got = [m for ms in messages for m in ms]
    assert [(m.kind, m.client, m.req_id, m.rows, m.tag, m.array.shape) for m in got] == [
        (msg.RESULT, p.client, p.req_id, p.rows, p.tag, (len(p.rows), fake.FAKE_WIDTH)) for p in pieces]
    assert got[0].call is not None and all(m.call is None for m in got[1:])  # the call, described once
    assert harness.recv(msg.DONE).batch_id == 7


def test_the_engine_s_errors_become_fail_frames_once(harness):
    """Input the engine refuses fails its piece as bad_request, in the validator's words; a length
    the engine cannot lay out fails it as failed; the worker goes on serving."""
    harness.send_batch(1, ['fine', 3])
    bad = harness.result()
    assert (bad.kind, bad.piece_id, bad.code) == (msg.FAIL, 1, ErrorCode.BAD_REQUEST)
    assert bad.message == 'texts[1] is int (3), expected str'
    harness.send_batch(2, [f'a {NO_ROOM_WORD}'])
    failed = harness.result()
    assert (failed.kind, failed.piece_id, failed.code) == (msg.FAIL, 2, ErrorCode.FAILED)
    assert failed.message == ('the model cannot lay out this request: max_seq_len=1 is too short: a sentence '
                              'needs 2 tokens for [CLS] and [SEP]')
    harness.send_batch(3, ['fine'])
    good = harness.result()
    assert (good.kind, good.piece_id, good.array.shape) == (msg.RESULT, 3, (1, fake.FAKE_WIDTH))
