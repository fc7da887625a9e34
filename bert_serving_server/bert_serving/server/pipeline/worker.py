"""Worker process: encodes the batches the ventilator hands out. Local and remote workers are the
same code; a local one is started by the server, a remote one by ``bert-serving-worker``.

Sockets (created in ``run``, inside the process):
    DEALER  connects to the ventilator's ROUTER: ``backend`` (ipc) for a local worker, tcp
            ``ip:port_worker`` for a remote one. HELLO, READY, HEARTBEAT, DONE out; WELCOME, PONG,
            REGISTER_AGAIN, BATCH in.
    PUSH    connects to the sink's PULL, at the address the WELCOME gives: RESULT / FAIL per piece.

The life of a worker: HELLO (with the fingerprint of its model and flags) -> WELCOME, or REJECT and
exit -> load the engine -> READY -> batches. A heartbeat goes out every second and the server answers
it; a worker that hears nothing for ``server_timeout`` seconds, or is told REGISTER_AGAIN (the
server restarted, or had declared it lost), says HELLO again, with backoff, until welcomed.

Three threads share the work. The io thread owns the DEALER and only moves messages, so nothing
delays its heartbeats; the featurize thread parses and tokenizes the next batch while the main thread
runs the model on the current one (TensorFlow releases the GIL) and sends the results.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Set, Tuple

import zmq

from bert_serving.client.errors import BadRequest, BertServingError
from bert_serving.client.protocol import ErrorCode
from bert_serving.client.security import CurveKeys, secure_client_socket

from ..config import EngineConfig, ServerConfig, field_default
from ..errors import EncodeError
from ..engine.checkpoint import BertConfig, ModelFiles
from ..engine.devices import CPU_BATCH_TOKENS
from ..engine.graph import FrozenGraph
from ..engine.runner import release_free_memory
from ..engine.tfimport import defer_public_api
from ..log import get_logger
from . import messages as msg
from ..launcher import install_stop_handler, parent_alive, read_spec, signal_ready

__all__ = ['WorkerConfig', 'Worker', 'worker_spec', 'leave']

POLL_MS = 100
BACKOFF_MAX_SECONDS = 5.0  # HELLO again at most this far apart while the server is away
STOP_GRACE_SECONDS = 10.0  # after SIGTERM, a worker stuck in the model leaves anyway
TRIM_IDLE_SECONDS, TRIM_BUSY_SECONDS = 1.0, 5.0  # return freed heap to the system at most this often
WATCHDOG_MARGIN_SECONDS = 5.0  # past the server's -batch_timeout on one batch, the worker leaves itself


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


class Rejected(BertServingError):
    """The server refused this worker (the message says why); the worker exits with code 3."""


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
        self._leaving = threading.Event()
        self._thread_died = False
        self._generation = 0  # bumped when the server forgets us: work of an older one is dropped
        self._rejected = False
        self._computing: Optional[int] = None  # reported in heartbeats
        self._started: Optional[float] = None  # when the current batch started (watchdog)
        self._batch_timeout: Optional[float] = None  # the server's, from WELCOME
        self._results_lock = threading.Lock()
        self._results_leaving: Dict[int, zmq.MessageTracker] = {}  # batch id -> its last result, still queued

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
                dealer.setsockopt(zmq.IDENTITY, s.identity.encode('latin-1'))
                dealer.setsockopt(zmq.IMMEDIATE, 1)  # nothing queues for a server that is not there
                # zmq's own backoff, up to 1 s: back within a second of a cut link's return, before
                # the server's -heartbeat_timeout; a connect that hangs (SYNs lost) is tried afresh.
                dealer.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
                dealer.setsockopt(zmq.CONNECT_TIMEOUT, 3000)
                dealer.setsockopt(zmq.HEARTBEAT_IVL, 1000)  # notice a dead TCP peer (cut link)
                dealer.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
                dealer.connect(s.backend_addr)
                welcome = self._register(dealer)
                if welcome is None:
                    return 0
                self._batch_timeout = welcome.batch_timeout
                sink.connect(welcome.sink or f'tcp://{s.server_host}:{welcome.sink_port}')
                try:
                    engine = self._load()
                except Exception as e:  # report any start failure instead of dying silently
                    self.logger.error('cannot start: %s', e, exc_info=s.verbose)
                    self._send(dealer, msg.pack_fatal(f'{type(e).__name__}: {e}'))
                    return 2
                self._serve(ctx, dealer, sink, engine)
                return 3 if self._rejected else 1 if self._thread_died else 0
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

    def _alive(self) -> bool:
        return (not self.stop_event.is_set() and not self._leaving.is_set()
                and parent_alive(self.config.parent_pid))

    @staticmethod
    def _send(dealer, frames) -> bool:
        try:
            dealer.send_multipart(frames, zmq.NOBLOCK)
            return True
        except zmq.Again:  # not connected right now; heartbeats and HELLO are sent again anyway
            return False

    def _hello(self, dealer) -> None:
        s = self.config
        self._send(dealer, msg.pack_hello(s.fingerprint, socket.gethostname(), os.getpid(), s.device, s.local))

    def _register(self, dealer) -> Optional[msg.Control]:
        """HELLO until WELCOME (returned), REJECT (raised) or stop (None); backoff 1, 2, 4 s, then every BACKOFF_MAX_SECONDS."""
        backoff, next_hello = 1.0, 0.0
        while self._alive():
            if time.monotonic() >= next_hello:
                self._hello(dealer)
                next_hello = time.monotonic() + backoff
                backoff = min(BACKOFF_MAX_SECONDS, backoff * 2)
            if not dealer.poll(POLL_MS):
                continue
            try:
                control = msg.unpack_control(dealer.recv_multipart())
            except msg.BadMessage as e:
                self.logger.warning('dropped a message while registering: %s', e)
                continue
            if control.kind == msg.WELCOME:
                return control
            if control.kind == msg.REJECT:
                raise Rejected(control.reason)
        return None

    def _load(self):
        from ..engine.factory import create_engine
        s = self.config
        if self.engine_config.engine != 'fake':
            defer_public_api()  # this process runs the graph: the runtime without the public API
        self.logger.info('loading the %s engine on %s...', self.engine_config.engine, s.device)
        engine = create_engine(self.engine_config, logger=self.logger, graph=self.graph,
                                intra_op_threads=s.intra_op_threads, inter_op_threads=s.inter_op_threads,
                                gpu_memory_fraction=s.gpu_memory_fraction, max_batch_size=s.max_batch_size,
                                max_batch_tokens=s.max_batch_tokens,
                                frozen_weights=True)  # a worker never trains: oneDNN may cache the weights
        engine.warm_up()  # the first session runs are slow; do them before READY
        self.logger.info('ready (%s)', s.device)
        return engine

    def _serve(self, ctx, dealer, sink, engine) -> None:
        """Runs the model on the calling thread; the io and featurize threads feed it."""
        s = self.config
        incoming: 'queue.Queue' = queue.Queue(maxsize=s.credit + 2)  # (generation, batch id, frames)
        work: 'queue.Queue' = queue.Queue(maxsize=1)  # (generation, batch id, prepared pieces or None)
        done_addr = f'inproc://done-{s.identity}'
        done_pull = ctx.socket(zmq.PULL)
        done_pull.bind(done_addr)
        threads = [threading.Thread(target=self._guard, name='io', daemon=True,
                                    args=(self._io_loop, dealer, done_pull, incoming)),
                   threading.Thread(target=self._guard, name='featurize', daemon=True,
                                    args=(self._featurize_loop, incoming, work, engine))]
        self._send(dealer, msg.pack_ready(s.credit, os.getpid(), s.device))
        for thread in threads:
            thread.start()
        done_push = ctx.socket(zmq.PUSH)
        done_push.setsockopt(zmq.LINGER, 0)
        done_push.connect(done_addr)
        last_trim = time.monotonic()
        try:
            while self._alive():
                try:
                    generation, batch_id, prepared = work.get(timeout=POLL_MS / 1000)
                except queue.Empty:
                    continue
                if generation != self._generation:
                    continue  # the server forgot us since: others compute it
                self._computing, self._started = batch_id, time.monotonic()
                self._compute(batch_id, prepared or [], sink, engine)
                self._computing = self._started = None
                done_push.send(b'%d' % batch_id)
                # TensorFlow frees its per-batch buffers but glibc keeps the pages: ~120 MB after
                # 4,096 one-sentence requests. Handing them back takes 1-14 ms.
                now = time.monotonic()
                if now - last_trim > (TRIM_IDLE_SECONDS if work.empty() else TRIM_BUSY_SECONDS):
                    release_free_memory()
                    last_trim = now
        finally:
            self._leaving.set()
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
            self._leaving.set()

    def _io_loop(self, dealer, done_pull, incoming) -> None:
        """The io thread owns the DEALER: heartbeats, registration again, batches in, DONE out. It
        never waits on anything else (a batch is parsed and tokenized by the featurize thread), so a
        heartbeat goes out every HEARTBEAT_SECONDS however large the batches. Each heartbeat names
        every batch held (received, DONE not sent yet), those whose results are still leaving, and
        the mark of the last PONG: the server sends again what is not held, and results that do
        not reach the sink soon after they left (see Scheduler.seen)."""
        s = self.config
        poller = zmq.Poller()
        poller.register(dealer, zmq.POLLIN)
        poller.register(done_pull, zmq.POLLIN)
        next_beat, last_contact = 0.0, time.monotonic()
        registering, next_hello, backoff = False, 0.0, 1.0
        held: Set[int] = set()
        pong: Optional[int] = None
        undelivered: List[int] = []  # DONE the server could not take yet (not connected right now)
        while self._alive():
            now = time.monotonic()
            while undelivered and self._send(dealer, msg.pack_done(undelivered[0])):
                held.discard(undelivered.pop(0))
            if not registering and now >= next_beat:
                self._send(dealer, msg.pack_heartbeat(self._computing, sorted(held), pong, self._still_leaving()))
                next_beat = now + msg.HEARTBEAT_SECONDS
            if not registering and now - last_contact > s.server_timeout:
                self.logger.warning('no word from the server for %.0fs; registering again', now - last_contact)
                registering, next_hello, backoff, pong = True, 0.0, 1.0, None
                self._forget_work(incoming, held, undelivered)
            if registering and now >= next_hello:
                self._hello(dealer)
                next_hello, backoff = now + backoff, min(BACKOFF_MAX_SECONDS, backoff * 2)
            events = dict(poller.poll(POLL_MS))
            if done_pull in events:
                batch_id = int(done_pull.recv())
                if batch_id in held and batch_id not in undelivered:  # else the server forgot it
                    if self._send(dealer, msg.pack_done(batch_id)):
                        held.discard(batch_id)
                    else:
                        undelivered.append(batch_id)
            if dealer not in events:
                continue
            frames = dealer.recv_multipart()
            last_contact = time.monotonic()
            if frames and frames[0] == msg.BATCH:
                try:
                    batch_id = msg.peek_batch(frames)
                except msg.BadMessage as e:
                    self.logger.warning('dropped a malformed batch from the ventilator: %s', e)
                    continue
                if registering:
                    continue  # sent before the server forgot us: it goes to others
                try:
                    incoming.put_nowait((self._generation, batch_id, frames))
                    held.add(batch_id)
                except queue.Full:  # not held, so the server sends it again (elsewhere, or later)
                    self.logger.warning('dropped batch %d: %d batches wait already', batch_id, incoming.qsize())
                continue
            try:
                control = msg.unpack_control(frames)
            except msg.BadMessage as e:
                self.logger.warning('dropped a message from the ventilator: %s', e)
                continue
            if control.kind == msg.PONG and control.mark is not None:
                pong = control.mark
            elif control.kind == msg.REGISTER_AGAIN and not registering:
                self.logger.info('the server does not know this worker (restarted?); registering again')
                registering, next_hello, backoff, pong = True, 0.0, 1.0, None
                self._forget_work(incoming, held, undelivered)
            elif control.kind == msg.WELCOME and registering:
                registering = False
                self._send(dealer, msg.pack_ready(s.credit, os.getpid(), s.device))
                self.logger.info('registered with the server again')
            elif control.kind == msg.REJECT:
                self.logger.error('the server refused this worker: %s', control.reason)
                self._rejected = True
                self._leaving.set()

    def _still_leaving(self) -> List[int]:
        """Batches whose results are still queued for the sink (a slow link, or no connection)."""
        with self._results_lock:
            for batch_id in [b for b, tracker in self._results_leaving.items() if tracker.done]:
                del self._results_leaving[batch_id]
            return sorted(self._results_leaving)

    def _forget_work(self, incoming: 'queue.Queue', held: Set[int], undelivered: list) -> None:
        """The server forgot us: the batches we hold are being computed elsewhere; drop them (the
        other threads skip work of an older generation)."""
        self._generation += 1
        held.clear()
        undelivered.clear()
        with self._results_lock:
            self._results_leaving.clear()
        while True:
            try:
                incoming.get_nowait()
            except queue.Empty:
                return

    def _featurize_loop(self, incoming, work, engine) -> None:
        """The featurize thread: parses each batch and tokenizes its pieces while the model computes
        the one before."""
        while self._alive():
            try:
                generation, batch_id, frames = incoming.get(timeout=POLL_MS / 1000)
            except queue.Empty:
                continue
            if generation != self._generation:
                continue
            try:
                _, pieces = msg.unpack_batch(frames)
                prepared = [(p, *self._featurize(engine, p)) for p in pieces]
            except msg.BadMessage as e:  # DONE with nothing computed: its pieces go out again
                self.logger.warning('dropped a malformed batch from the ventilator: %s', e)
                prepared = None
            del frames  # up to 64 MiB of text
            while self._alive() and generation == self._generation:
                try:
                    work.put((generation, batch_id, prepared), timeout=POLL_MS / 1000)
                    break
                except queue.Full:
                    continue

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

    def _compute(self, batch_id: int, prepared, sink, engine) -> None:
        """Encodes every good piece of a batch in one go and sends each its rows."""
        good = [(p, f) for p, f, fail in prepared if fail is None]
        for _, _, fail in prepared:
            if fail is not None:
                sink.send_multipart(fail)
        if not good:
            return
        features: List = [f for _, feats in good for f in feats]
        t0 = time.perf_counter()
        try:
            vectors = engine.run(features)
        except Exception as e:  # a model failure fails this batch's requests, not the worker
            self.logger.error('batch %d failed: %s', batch_id, e, exc_info=True)
            for p, _ in good:
                sink.send_multipart(msg.pack_piece_fail(p, f'the model failed on this request: {type(e).__name__}: {e}',
                                                        ErrorCode.FAILED))
            return
        self.logger.debug('batch %d: %d pieces, %d sequences in %.1f ms', batch_id, len(good), len(features),
                          1000 * (time.perf_counter() - t0))
        start = 0
        trim = engine.trims_token_axis()
        for piece, feats in good:
            rows = vectors[start:start + len(feats)]
            start += len(feats)
            if trim:  # the sink pads every piece to the longest input of its request
                rows = rows[:, :max((len(f.input_ids) for f in feats), default=1)]
            tokens = [list(f.tokens) for f in feats] if piece.show_tokens else None
            tracker = sink.send_multipart(msg.pack_result(piece, rows, tokens), copy=False, track=True)
        # One pipe, in order: the last result leaves last. pyzmq copies a result under 64 KB (its
        # tracker is done at once: small results leave fast); a larger one is sent from its array.
        if not tracker.done:
            with self._results_lock:
                self._results_leaving[batch_id] = tracker


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
