"""Worker process: encodes the batches the ventilator hands out. Local and remote workers are the
same code; a local one is started by the server, a remote one by ``bert-serving-worker``.

Sockets (created in ``run``, inside the process):
    DEALER  connects to the ventilator's ROUTER; driven by ``link.ServerLink`` (registration,
            heartbeats, batches in, DONE out).
    PUSH    connects to the sink's PULL, at the address the WELCOME gives: the RESULTs of each model
            call (several pieces a message, see RESULT_MESSAGE_BYTES), a FAIL per failed piece.
    PULL    binds ``inproc://done-<identity>``, which a PUSH of the main thread connects to: the
            batches computed, for the io thread to report DONE.

The life of a worker: HELLO (with the fingerprint of its model and flags) -> WELCOME, or REJECT and
exit -> load the engine -> READY -> batches. Meanwhile ``link.ServerLink`` heartbeats, and registers
again when the server has forgotten this worker.

Three threads share the work. The io thread owns the DEALER and only moves messages, so nothing
delays its heartbeats. The main thread runs the model and sends the results. A batch that arrives
while the main thread waits goes straight to it, and it parses and tokenizes the batch itself; one
that arrives while the model runs goes to the featurize thread, which prepares it meanwhile
(TensorFlow releases the GIL). A watchdog thread ends the process when one batch hangs in the model,
or a stop is not obeyed.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import zmq

from bert_serving.client.errors import BadRequest
from bert_serving.client.protocol import ErrorCode
from bert_serving.client.security import CurveKeys, secure_client_socket

from ..config import EngineConfig, ServerConfig, field_default
from ..errors import EncodeError
from ..engine.checkpoint import BertConfig, ModelFiles
from ..engine.devices import CPU_BATCH_TOKENS
from ..engine.graph import FrozenGraph
from ..engine.runner import prefer_system_allocator, release_free_memory
from ..engine.tfimport import defer_public_api
from ..log import get_logger
from ..launcher import install_stop_handler, read_spec, signal_ready
from ..residency import release_start_up_pages
from . import messages as msg
from .link import POLL_MS, Rejected, ServerLink, WorkState

__all__ = ['WorkerConfig', 'Worker', 'Inbox', 'worker_spec', 'leave']

STOP_GRACE_SECONDS = 10.0  # after SIGTERM, a worker stuck in the model leaves anyway
TRIM_IDLE_SECONDS, TRIM_BUSY_SECONDS = 1.0, 5.0  # return freed heap to the system at most this often
WATCHDOG_MARGIN_SECONDS = 5.0  # past the server's -batch_timeout on one batch, the worker leaves itself
# A batch's results go to the sink in RESULT messages of several pieces each, cut after this many
# bytes of rows: one message per model call for small requests (31 one-sentence results: 1.8 ms of
# sends as 31 messages), while a large result still flows without waiting for the whole batch.
RESULT_MESSAGE_BYTES = 1 << 20


@dataclass(frozen=True)
class WorkerConfig:
    """What one worker needs beyond the engine config.

    Attributes:
        name: in logs and status, e.g. ``WORKER-0`` or ``REMOTE-host-1234``.
        identity: the DEALER identity (unique per process).
        fingerprint: of the model files and output flags; the server refuses a different one.
        backend_addr: the ventilator's ROUTER.
        server_host: for a remote worker, the host whose sink port the WELCOME names.
        local: started by the server (it watches this process; we watch it, by parent_pid).
        server_timeout: seconds without a word from the server before registering again.
        curve: z85 keys (server_public, public, secret) when the server runs with -auth_dir.
    """
    name: str
    identity: str
    fingerprint: str
    device_id: int  # -1 = CPU
    backend_addr: str
    server_host: str = ''
    local: bool = True
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    gpu_memory_fraction: Optional[float] = None
    credit: int = 2
    max_batch_size: int = field_default(ServerConfig, 'max_batch_size')
    max_batch_tokens: int = CPU_BATCH_TOKENS
    server_timeout: float = 10.0
    curve: Optional[Tuple[str, str, str]] = None
    verbose: bool = False
    parent_pid: int = 0

    @property
    def device(self) -> str:
        return 'cpu' if self.device_id < 0 else f'gpu:{self.device_id}'


def worker_spec(engine_config: EngineConfig, config: WorkerConfig, graph: Optional[FrozenGraph]) -> dict:
    """What ``python -m bert_serving.server.pipeline.worker`` reads on stdin (JSON-safe). ``graph``
    is None for an engine that needs none (the fake)."""
    return json.loads(json.dumps({'engine': engine_config.to_json(), 'config': dataclasses.asdict(config),
                                  'graph': None if graph is None else dataclasses.asdict(graph)}, default=str))


def _from_spec(spec: dict) -> Tuple[EngineConfig, WorkerConfig, Optional[FrozenGraph]]:
    g = spec.get('graph')
    graph = None if g is None else FrozenGraph(g['path'], ModelFiles(**g['files']), BertConfig(**g['bert_config']),
                                               g['from_cache'])
    config = spec['config']
    if config.get('curve'):
        config['curve'] = tuple(config['curve'])
    return EngineConfig(**spec['engine']), WorkerConfig(**config), graph


class Inbox:
    """Where the io thread leaves each batch it receives (``put_nowait``): straight in ``work``
    when the main thread waits on it with nothing queued (``idle()``), marked raw, for the main
    thread to parse and tokenize itself; else in ``ahead`` for the featurize thread, which prepares
    it while the model runs. The direct way saves a thread wake-up, which costs most after an idle
    gap: one sentence after 10 ms idle took 14.56 and 14.93 ms p50 through the service against
    14.95 and 15.65 (benchmarks.timeline --pause_ms 10, two alternating rounds of 300, 2 vCPUs),
    3.27 and 3.27 against 3.39 and 3.33 with -engine fake; back to back, and for one large
    request, the difference was within the machine's noise.

    Items are ``(generation, batch id, frames, when it arrived)``; in ``work`` with a last element,
    True for a raw batch.
    """

    def __init__(self, ahead: 'queue.Queue', work: 'queue.Queue', idle: Callable[[], bool]):
        self.ahead, self.work, self._idle = ahead, work, idle

    def put_nowait(self, item: tuple) -> None:
        """Raises queue.Full when the featurize thread's queue is full too."""
        if self._idle():
            try:
                self.work.put_nowait((*item, True))
                return
            except queue.Full:
                pass
        self.ahead.put_nowait(item)

    def get_nowait(self) -> tuple:
        """Takes from ``ahead`` (the io thread drops what it held when the server forgets it; a
        raw batch of an old generation in ``work`` is skipped by the main thread)."""
        return self.ahead.get_nowait()

    def qsize(self) -> int:
        return self.ahead.qsize()


class Worker:
    """One encoding process.

    Args:
        engine_config: the model and pooling flags.
        config: addresses, threads and batching of this worker.
        graph: the frozen graph (None for the fake engine).
        stop_event: set means stop (SIGTERM).
    """

    def __init__(self, engine_config: EngineConfig, config: WorkerConfig, graph: Optional[FrozenGraph], stop_event):
        self.engine_config = engine_config
        self.config = config
        self.graph = graph
        self.stop_event = stop_event
        self.logger = get_logger(config.name, config.verbose)
        self.state = WorkState(stop_event, config.parent_pid)
        self._thread_died = False
        self.waiting_for_work = threading.Event()  # set while the main thread waits for a batch (Inbox)
        self._started: Optional[float] = None  # when the current batch started (watchdog)
        self._batch_timeout: Optional[float] = None  # the server's, from WELCOME

    def run(self) -> int:
        """Serves until stopped. Returns the exit code: 0 stopped, 1 a helper thread died, 3 rejected."""
        s = self.config
        threading.Thread(target=self._watchdog, name='watchdog', daemon=True).start()
        os.environ['CUDA_VISIBLE_DEVICES'] = '-1' if s.device_id < 0 else str(s.device_id)
        os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '0' if s.verbose else '3')
        with zmq.Context() as ctx:
            dealer, sink = ctx.socket(zmq.DEALER), ctx.socket(zmq.PUSH)
            try:
                for sock in (dealer, sink):
                    sock.setsockopt(zmq.LINGER, 0)
                    self._secure(sock)
                link = ServerLink(dealer, s, self.state, self.logger)
                link.connect()
                welcome = link.register()
                if welcome is None:
                    return 0
                self._batch_timeout = welcome.batch_timeout
                sink.connect(welcome.sink or f'tcp://{s.server_host}:{welcome.sink_port}')
                try:
                    engine = self._load()
                except Exception as e:  # report any start failure instead of dying silently
                    self.logger.error('cannot start: %s', e, exc_info=s.verbose)
                    link.send(msg.pack_fatal(f'{type(e).__name__}: {e}'))
                    return 2
                self._serve(ctx, link, sink, engine)
                return 3 if self.state.rejected else 1 if self._thread_died else 0
            except Rejected as e:
                self.logger.error('the server refused this worker: %s', e)
                return 3
            except zmq.ContextTerminated:
                return 0
            finally:
                dealer.close()
                sink.close()

    def _watchdog(self) -> None:
        """Leaves the process (exit 1) when one batch takes longer than the server's -batch_timeout
        (a hung model call: the server has given the batch to others, and a supervisor restarts
        us), or when a stop was asked and the model does not return within STOP_GRACE_SECONDS."""
        stopped_at = None
        while True:
            time.sleep(0.5)
            now = time.monotonic()
            if self.stop_event.is_set() and stopped_at is None:
                stopped_at = now
            if stopped_at is not None and now - stopped_at > STOP_GRACE_SECONDS:
                self.logger.warning('still busy %.0fs after the stop; leaving now', now - stopped_at)
                leave(0)
            started, limit = self._started, self._batch_timeout
            if started is not None and limit is not None and now - started > limit + WATCHDOG_MARGIN_SECONDS:
                self.logger.error('one batch has taken %.0fs, past the server\'s -batch_timeout %.0fs: the model '
                                  'hangs; leaving so that a fresh worker takes over', now - started, limit)
                leave(1)

    def _secure(self, sock) -> None:
        """Curve on both sockets when the server runs with -auth_dir (for a remote worker)."""
        secure_client_socket(sock, CurveKeys(*self.config.curve) if self.config.curve else None)

    def _load(self):
        from ..engine.factory import create_engine
        s = self.config
        runs_tensorflow = self.engine_config.engine != 'fake'
        if runs_tensorflow:
            prefer_system_allocator()
            defer_public_api()  # this process runs the graph: the runtime without the public API
        self.logger.info('loading the %s engine on %s...', self.engine_config.engine, s.device)
        engine = create_engine(self.engine_config, logger=self.logger, graph=self.graph,
                                intra_op_threads=s.intra_op_threads, inter_op_threads=s.inter_op_threads,
                                gpu_memory_fraction=s.gpu_memory_fraction, max_batch_size=s.max_batch_size,
                                max_batch_tokens=s.max_batch_tokens,
                                frozen_weights=True)  # a worker never trains: oneDNN may cache the weights
        engine.warm_up()  # the first session runs are slow; do them before READY
        if runs_tensorflow:
            release_start_up_pages(self.logger)  # TensorFlow's start-up code and data: ~250 MiB of RSS
            engine.warm_up()  # the pages a request needs come back now, not on the first request
        self.logger.info('ready (%s)', s.device)
        return engine

    def _serve(self, ctx, link: ServerLink, sink, engine) -> None:
        """Runs the model on the calling thread; the io and featurize threads feed it."""
        s = self.config
        # (generation, batch id, frames, when it arrived), and (..., prepared pieces or None, when it
        # arrived, False) from the featurize thread or (..., frames, when it arrived, True) from the io thread
        ahead: 'queue.Queue' = queue.Queue(maxsize=s.credit + 2)
        work: 'queue.Queue' = queue.Queue(maxsize=1)
        waiting = self.waiting_for_work
        incoming = Inbox(ahead, work, lambda: waiting.is_set() and work.empty())
        done_addr = f'inproc://done-{s.identity}'
        done_pull = ctx.socket(zmq.PULL)
        done_pull.bind(done_addr)
        threads = [threading.Thread(target=self._guard, name='io', daemon=True,
                                    args=(link.io_loop, done_pull, incoming)),
                   threading.Thread(target=self._guard, name='featurize', daemon=True,
                                    args=(self._featurize_loop, ahead, work, engine))]
        link.ready()
        for thread in threads:
            thread.start()
        done_push = ctx.socket(zmq.PUSH)
        done_push.setsockopt(zmq.LINGER, 0)
        done_push.connect(done_addr)
        last_trim = time.monotonic()
        try:
            while self.state.alive():
                waiting.set()  # stays set through the timeouts of an idle wait
                try:
                    generation, batch_id, payload, arrived, raw = work.get(timeout=POLL_MS / 1000)
                except queue.Empty:
                    continue
                waiting.clear()
                if generation != self.state.generation:
                    continue  # the server forgot us since: others compute it
                prepared = self._prepare(engine, payload) if raw else payload
                started = time.monotonic()
                self.state.computing, self._started = batch_id, started
                self._compute(batch_id, prepared or [], sink, engine, arrived)
                self.state.computing = self._started = None
                self.state.busy_seconds += time.monotonic() - started
                done_push.send(b'%d' % batch_id)
                # TensorFlow frees its per-batch buffers but glibc keeps the pages: ~120 MB after
                # 4,096 one-sentence requests. Handing them back takes 1-14 ms.
                now = time.monotonic()
                if now - last_trim > (TRIM_IDLE_SECONDS if work.empty() else TRIM_BUSY_SECONDS):
                    release_free_memory()
                    last_trim = now
        finally:
            self.state.leaving.set()
            for thread in threads:
                thread.join(timeout=2)
            done_push.close()
            done_pull.close()

    def _guard(self, loop, *args) -> None:
        """Runs a helper thread's loop. If it dies, the worker leaves (exit code 1) and is replaced,
        rather than keep its credit and its batches forever."""
        try:
            loop(*args)
        except Exception:  # noqa: BLE001 - anything here means this worker can no longer serve
            self.logger.exception('the %s thread died; this worker exits and is replaced',
                                  threading.current_thread().name)
            self._thread_died = True
            self.state.leaving.set()

    def _featurize_loop(self, incoming, work, engine) -> None:
        """The featurize thread: parses and tokenizes each batch that came while the model was
        busy (see Inbox), so that it is ready when the model is."""
        while self.state.alive():
            try:
                generation, batch_id, frames, arrived = incoming.get(timeout=POLL_MS / 1000)
            except queue.Empty:
                continue
            if generation != self.state.generation:
                continue
            prepared = self._prepare(engine, frames)
            del frames  # up to 64 MiB of text
            while self.state.alive() and generation == self.state.generation:
                try:
                    work.put((generation, batch_id, prepared, arrived, False), timeout=POLL_MS / 1000)
                    break
                except queue.Full:
                    continue

    def _prepare(self, engine, frames) -> Optional[list]:
        """A batch's pieces, each with its features or the FAIL frames that answer it; None for a
        malformed batch (DONE with nothing computed: its pieces go out again)."""
        try:
            _, pieces = msg.unpack_batch(frames)
        except msg.BadMessage as e:
            self.logger.warning('dropped a malformed batch from the ventilator: %s', e)
            return None
        return [(p, *self._featurize(engine, p)) for p in pieces]

    @staticmethod
    def _featurize(engine, piece) -> Tuple[Optional[list], Optional[List[bytes]]]:
        """The piece's features, or the FAIL frames that answer it. Any other exception is a bug
        of the engine: it ends the featurize thread, and the worker is replaced."""
        try:
            return engine.featurize(piece.texts, piece.is_tokenized), None
        except BadRequest as e:  # the request's fault
            return None, msg.pack_piece_fail(piece, str(e), ErrorCode.BAD_REQUEST)
        except EncodeError as e:  # the engine's length settings
            return None, msg.pack_piece_fail(piece, f'the model cannot lay out this request: {e}', ErrorCode.FAILED)

    def _compute(self, batch_id: int, prepared, sink, engine, arrived: Optional[float] = None) -> None:
        """Encodes every good piece of a batch in one go and sends the pieces' rows (RESULT messages of
        up to RESULT_MESSAGE_BYTES), each with the piece's
        queue time (the ventilator's ``queued`` plus the wait here since the batch ``arrived``,
        time.monotonic()) and the model call's seconds; the first result also describes the call
        (its rows, the word-piece rows its dense layers computed and each input's word pieces) for the server's metrics."""
        good = [(p, f) for p, f, fail in prepared if fail is None]
        for _, _, fail in prepared:
            if fail is not None:
                sink.send_multipart(fail)
        if not good:
            return
        features: List = [f for _, feats in good for f in feats]
        waited = 0.0 if arrived is None else time.monotonic() - arrived
        t0 = time.perf_counter()
        try:
            vectors = engine.run(features)
        except Exception as e:  # a model failure fails this batch's requests, not the worker
            self.logger.error('batch %d failed: %s', batch_id, e, exc_info=True)
            for p, _ in good:
                sink.send_multipart(msg.pack_piece_fail(p, f'the model failed on this request: {type(e).__name__}: {e}',
                                                        ErrorCode.FAILED))
            return
        model = time.perf_counter() - t0
        self.logger.debug('batch %d: %d pieces, %d sequences in %.1f ms', batch_id, len(good), len(features),
                          1000 * model)
        lengths = [len(f.input_ids) for f in features]
        padded = engine.last_padded_tokens or len(features) * max(lengths, default=1)
        call = {'rows': len(features), 'padded': padded, 'lengths': lengths}
        start = 0
        trim = engine.trims_token_axis()
        group, group_bytes, tracker = [], 0, None
        for i, (piece, feats) in enumerate(good):
            rows = vectors[start:start + len(feats)]
            start += len(feats)
            if trim:  # the sink pads every piece to the longest input of its request
                rows = rows[:, :max((len(f.input_ids) for f in feats), default=1)]
            tokens = [list(f.tokens) for f in feats] if piece.show_tokens else None
            group.append(msg.result_entry(piece, rows, tokens, queue=piece.queued + waited, model=model, call=call))
            group_bytes += rows.nbytes
            call = None  # described once, with the first piece
            if group_bytes >= RESULT_MESSAGE_BYTES or i == len(good) - 1:
                sent = sink.send_multipart(msg.pack_results(group), copy=False, track=True)
                # pyzmq copies a frame under 64 KB (its tracker is done at once) and sends a larger
                # one from its array: follow the last message that holds such a frame.
                tracker = tracker if sent.done else sent
                group, group_bytes = [], 0
        if tracker is not None and not tracker.done:
            self.state.results_leaving(batch_id, tracker)


def leave(code: int) -> None:
    # Sockets are closed and results delivered; TensorFlow's own teardown of its thread pools
    # can take seconds, which would only delay the server's shutdown, so leave at once.
    logging.shutdown()
    os._exit(code)


def main() -> None:
    """``python -m bert_serving.server.pipeline.worker``: the spec of :func:`worker_spec` comes on stdin."""
    spec = read_spec()
    stop = install_stop_handler()
    engine_config, config, graph = _from_spec(spec)
    config = dataclasses.replace(config, parent_pid=spec.get('parent_pid', config.parent_pid))
    signal_ready(spec)  # started; READY over the DEALER says when the model is loaded
    leave(Worker(engine_config, config, graph, stop).run())


if __name__ == '__main__':
    main()
