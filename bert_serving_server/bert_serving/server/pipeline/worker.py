"""Worker process: encodes batches that the ventilator hands out.

Sockets (created in ``run``, inside the process):
    DEALER  connects to the ventilator's ROUTER (``backend``): READY/DONE out, BATCH in.
    PUSH    connects to the sink's PULL (``sink``): RESULT / FAIL per piece.

Two threads overlap work: the receiver thread tokenizes the next batch while
the main thread runs TensorFlow on the current one (TF releases the GIL).
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
from typing import List, Optional, Tuple

import zmq

from bert_serving.client.protocol import ErrorCode

from . import messages as msg
from ..engine.checkpoint import BertConfig, ModelFiles
from ..config import EngineConfig
from ..engine.graph import FrozenGraph
from .launcher import install_stop_handler, parent_alive, read_spec, signal_ready
from ..log import get_logger

__all__ = ['WorkerSettings', 'Worker', 'worker_spec']

POLL_MS = 100


@dataclass(frozen=True)
class WorkerSettings:
    """What one worker needs beyond the engine config."""
    worker_id: int
    generation: int
    device_id: int  # -1 = CPU
    backend_addr: str
    sink_addr: str
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    gpu_memory_fraction: Optional[float] = None
    credit: int = 2
    max_batch_size: int = 256
    max_batch_tokens: int = 4096
    show_tokens: bool = False
    verbose: bool = False
    parent_pid: int = 0

    @property
    def identity(self) -> bytes:
        return b'worker-%d-%d' % (self.worker_id, self.generation)


def worker_spec(engine: EngineConfig, settings: WorkerSettings, graph: Optional[FrozenGraph]) -> dict:
    """What ``python -m bert_serving.server.pipeline.worker`` reads on stdin (JSON-safe). ``graph``
    is None for an engine that needs none (the fake)."""
    return json.loads(json.dumps({'engine': dataclasses.asdict(engine), 'settings': dataclasses.asdict(settings),
                                  'graph': None if graph is None else dataclasses.asdict(graph)}, default=str))


def _from_spec(spec: dict) -> Tuple[EngineConfig, WorkerSettings, Optional[FrozenGraph]]:
    g = spec.get('graph')
    graph = None if g is None else FrozenGraph(g['path'], ModelFiles(**g['files']), BertConfig(**g['bert_config']),
                                               g['from_cache'])
    return EngineConfig(**spec['engine']), WorkerSettings(**spec['settings']), graph


class Worker:
    """One encoding process (run as its own command, so that no TensorFlow or ZeroMQ state and no
    user ``__main__`` comes from the parent).

    Args:
        engine: the model and pooling flags.
        settings: addresses, threads and batching of this worker.
        graph: the frozen graph prepared by the server.
        stop_event: set means stop (SIGTERM from the parent).
    """

    def __init__(self, engine: EngineConfig, settings: WorkerSettings, graph: FrozenGraph, stop_event):
        self.engine = engine
        self.settings = settings
        self.graph = graph
        self.stop_event = stop_event

    def run(self) -> None:
        s = self.settings
        os.environ['CUDA_VISIBLE_DEVICES'] = '-1' if s.device_id < 0 else str(s.device_id)
        os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '0' if s.verbose else '3')
        logger = get_logger(f'WORKER-{s.worker_id}', s.verbose)
        exit_code = 0
        self._receiver_died = False
        with zmq.Context() as ctx:
            dealer = ctx.socket(zmq.DEALER)
            sink = ctx.socket(zmq.PUSH)
            try:
                for sock in (dealer, sink):
                    sock.setsockopt(zmq.LINGER, 0)
                dealer.setsockopt(zmq.IDENTITY, s.identity)
                dealer.connect(s.backend_addr)
                sink.connect(s.sink_addr)
                try:
                    encoder = self._load(logger)
                except Exception as e:  # report any start failure instead of dying silently
                    logger.error('cannot start: %s', e, exc_info=s.verbose)
                    dealer.send_multipart(msg.pack_fatal(f'{type(e).__name__}: {e}'))
                    return
                self._serve(ctx, dealer, sink, encoder, logger)
                if self._receiver_died:
                    exit_code = 1
            except zmq.ContextTerminated:
                pass
            finally:
                dealer.close()
                sink.close()
        # Sockets are closed and results delivered; TensorFlow's own teardown of its thread pools
        # can take seconds, which would only delay the server's shutdown, so leave at once.
        logging.shutdown()
        os._exit(exit_code)

    def _load(self, logger):
        from ..engine.base import create_engine
        s = self.settings
        device = 'cpu' if s.device_id < 0 else f'gpu {s.device_id}'
        logger.info('loading the %s engine on %s...', self.engine.engine, device)
        encoder = create_engine(self.engine, logger=logger, graph=self.graph,
                                intra_op_threads=s.intra_op_threads, inter_op_threads=s.inter_op_threads,
                                gpu_memory_fraction=s.gpu_memory_fraction, max_batch_size=s.max_batch_size,
                                max_batch_tokens=s.max_batch_tokens)
        encoder.encode(['warm up'])  # the first session run is slow; do it before READY
        logger.info('ready (%s)', device)
        return encoder

    def _alive(self) -> bool:
        return (not self.stop_event.is_set() and not self._leaving.is_set()
                and parent_alive(self.settings.parent_pid))

    def _serve(self, ctx, dealer, sink, encoder, logger) -> None:
        s = self.settings
        self._leaving = threading.Event()
        self._computing: Optional[int] = None  # reported in heartbeats
        work: 'queue.Queue' = queue.Queue(maxsize=max(1, s.credit))
        done_addr = f'inproc://done-{s.identity.decode()}'
        done_pull = ctx.socket(zmq.PULL)
        done_pull.bind(done_addr)
        receiver = threading.Thread(target=self._receive, name='receiver',
                                    args=(dealer, done_pull, work, encoder, logger), daemon=True)
        device = 'cpu' if s.device_id < 0 else f'gpu:{s.device_id}'
        dealer.send_multipart(msg.pack_ready(s.credit, os.getpid(), device))
        receiver.start()
        done_push = ctx.socket(zmq.PUSH)
        done_push.setsockopt(zmq.LINGER, 0)
        done_push.connect(done_addr)
        try:
            while self._alive():
                try:
                    batch_id, prepared = work.get(timeout=POLL_MS / 1000)
                except queue.Empty:
                    continue
                self._computing = batch_id
                self._compute(batch_id, prepared, sink, encoder, logger)
                self._computing = None
                done_push.send(b'%d' % batch_id)
        finally:
            # Stop only this worker's receiver: stop_event is shared by every process of the server.
            self._leaving.set()
            receiver.join(timeout=2)
            done_push.close()
            done_pull.close()

    def _receive(self, dealer, done_pull, work, encoder, logger) -> None:
        """Receiver thread. If it dies, the worker leaves (exit code 1) and is replaced, rather than
        keep its credit and its batches forever."""
        try:
            self._receive_loop(dealer, done_pull, work, encoder, logger)
        except Exception:  # noqa: BLE001 - anything here means this worker can no longer serve
            logger.exception('the receiver thread died; this worker exits and is replaced')
            self._receiver_died = True
            self._leaving.set()

    def _receive_loop(self, dealer, done_pull, work, encoder, logger) -> None:
        """Owns the DEALER: heartbeats, tokenizes batches, returns credit."""
        poller = zmq.Poller()
        poller.register(dealer, zmq.POLLIN)
        poller.register(done_pull, zmq.POLLIN)
        next_beat = 0.0
        while self._alive():
            if time.monotonic() >= next_beat:
                dealer.send_multipart(msg.pack_heartbeat(self._computing))
                next_beat = time.monotonic() + msg.HEARTBEAT_SECONDS
            events = dict(poller.poll(POLL_MS))
            if done_pull in events:
                dealer.send_multipart(msg.pack_done(int(done_pull.recv())))
            if dealer in events:
                frames = dealer.recv_multipart()
                try:
                    batch_id, pieces = msg.unpack_batch(frames)
                except msg.BadMessage as e:
                    logger.warning('dropped a malformed batch from the ventilator: %s', e)
                    continue
                prepared = [(p, *self._featurize(encoder, p)) for p in pieces]
                while self._alive():
                    try:
                        work.put((batch_id, prepared), timeout=POLL_MS / 1000)
                        break
                    except queue.Full:
                        continue

    @staticmethod
    def _featurize(encoder, piece) -> Tuple[Optional[list], Optional[str]]:
        try:
            return encoder.featurize(piece.texts, piece.is_tokenized), None
        except (TypeError, ValueError) as e:
            return None, str(e)

    def _compute(self, batch_id: int, prepared, sink, encoder, logger) -> None:
        """Encodes every good piece of a batch in one go and sends each its rows."""
        good = [(p, f) for p, f, err in prepared if err is None]
        for p, _, err in prepared:
            if err is not None:
                sink.send_multipart(msg.pack_fail(p.client, p.req_id, err, code=ErrorCode.BAD_REQUEST, serial=p.serial,
                                                  piece_id=p.piece_id))
        if not good:
            return
        features: List = [f for _, feats in good for f in feats]
        try:
            vectors = encoder.run(features)
        except Exception as e:  # a model failure fails this batch's requests, not the worker
            logger.error('batch %d failed: %s', batch_id, e, exc_info=True)
            for p, _ in good:
                sink.send_multipart(msg.pack_fail(p.client, p.req_id,
                                                  f'the model failed on this request: {type(e).__name__}: {e}',
                                                  code=ErrorCode.FAILED, serial=p.serial, piece_id=p.piece_id))
            return
        logger.debug('batch %d: %d pieces, %d sequences', batch_id, len(good), len(features))
        start = 0
        trim = encoder.trims_token_axis()
        for piece, feats in good:
            rows = vectors[start:start + len(feats)]
            start += len(feats)
            if trim:  # the sink pads every piece to the longest input of its request
                rows = rows[:, :max((len(f.input_ids) for f in feats), default=1)]
            show_tokens = self.settings.show_tokens or piece.show_tokens
            tokens = [list(f.tokens) for f in feats] if show_tokens else None
            sink.send_multipart(msg.pack_result(piece, rows, tokens), copy=False)


def main() -> None:
    """``python -m bert_serving.server.pipeline.worker``: the spec of :func:`worker_spec` comes on stdin."""
    spec = read_spec()
    stop = install_stop_handler()
    engine, settings, graph = _from_spec(spec)
    settings = dataclasses.replace(settings, parent_pid=spec.get('parent_pid', settings.parent_pid))
    signal_ready(spec)  # started; READY over the DEALER says when the model is loaded
    Worker(engine, settings, graph, stop).run()


if __name__ == '__main__':
    main()
