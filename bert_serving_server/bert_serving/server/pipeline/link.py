"""The worker's link to the server: its side of the ventilator's ROUTER, and the state its threads share.

Socket (created by ``Worker.run``, configured and driven here):
    DEALER  connects to the ventilator's ROUTER: ``backend`` (ipc) for a local worker, tcp
            ``ip:port_worker`` for a remote one. HELLO, READY, HEARTBEAT, DONE, FATAL out; WELCOME,
            PONG, REGISTER_AGAIN, REJECT, BATCH in.
It also reads the batch ids the model thread has finished from an inproc PULL that the worker binds.

A heartbeat goes out every second and the server answers it; a worker that hears nothing for
``server_timeout`` seconds, or is told REGISTER_AGAIN (the server restarted, or had declared it lost),
says HELLO again, with backoff, until welcomed, and drops the batches it held (others compute them).
"""
from __future__ import annotations

import os
import queue
import socket
import threading
import time
from typing import Dict, List, Optional, Set

import zmq

from bert_serving.client.errors import BertServingError

from ..launcher import parent_alive
from . import messages as msg

__all__ = ['Rejected', 'WorkState', 'ServerLink']

POLL_MS = 100
BACKOFF_MAX_SECONDS = 5.0  # HELLO again at most this far apart while the server is away


class Rejected(BertServingError):
    """The server refused this worker (the message says why); the worker exits with code 3."""


class WorkState:
    """What the io thread (the link) and the batch pipeline share.

    Args:
        stop_event: set means stop (SIGTERM).
        parent_pid: the server's pid for a local worker (0: none to watch).

    Attributes:
        leaving: set when the worker leaves (a stop, a REJECT, a dead thread, the end of serving).
        generation: bumped by the io thread when the server forgets us: work of an older one is dropped.
        computing: the batch the model runs now (set by the main thread), reported in heartbeats.
        busy_seconds: seconds spent computing batches and sending their results since the start (the
            main thread adds, heartbeats report it; the server turns it into each worker's busy fraction).
        rejected: the server sent REJECT after the worker had started serving.
    """

    def __init__(self, stop_event, parent_pid: int):
        self.stop_event = stop_event
        self.parent_pid = parent_pid
        self.leaving = threading.Event()
        self.generation = 0
        self.computing: Optional[int] = None
        self.busy_seconds = 0.0
        self.rejected = False
        self._results_lock = threading.Lock()
        self._results_leaving: Dict[int, zmq.MessageTracker] = {}  # batch id -> its last result, still queued

    def alive(self) -> bool:
        return (not self.stop_event.is_set() and not self.leaving.is_set()
                and parent_alive(self.parent_pid))

    def results_leaving(self, batch_id: int, tracker: zmq.MessageTracker) -> None:
        """The last result of ``batch_id`` is still queued for the sink (the main thread says so)."""
        with self._results_lock:
            self._results_leaving[batch_id] = tracker

    def still_leaving(self) -> List[int]:
        """Batches whose results are still queued for the sink (a slow link, or no connection)."""
        with self._results_lock:
            for batch_id in [b for b, tracker in self._results_leaving.items() if tracker.done]:
                del self._results_leaving[batch_id]
            return sorted(self._results_leaving)

    def forget_results(self) -> None:
        with self._results_lock:
            self._results_leaving.clear()


class ServerLink:
    """The worker's DEALER: registration, heartbeats, batches in, DONE out.

    Args:
        dealer: the DEALER socket, not connected yet (``connect`` does it).
        config: the worker's WorkerConfig; its identity, backend_addr, fingerprint, device, local,
            credit and server_timeout are read.
        state: shared with the batch pipeline.
        logger: the worker's.
    """

    def __init__(self, dealer, config, state: WorkState, logger):
        self.dealer = dealer
        self.config = config
        self.state = state
        self.logger = logger

    def connect(self) -> None:
        dealer = self.dealer
        dealer.setsockopt(zmq.IDENTITY, self.config.identity.encode('latin-1'))
        dealer.setsockopt(zmq.IMMEDIATE, 1)  # nothing queues for a server that is not there
        # zmq's own backoff, up to 1 s: back within a second of a cut link's return, before
        # the server's -heartbeat_timeout; a connect that hangs (SYNs lost) is tried afresh.
        dealer.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        dealer.setsockopt(zmq.CONNECT_TIMEOUT, 3000)
        dealer.setsockopt(zmq.HEARTBEAT_IVL, 1000)  # notice a dead TCP peer (cut link)
        dealer.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
        dealer.connect(self.config.backend_addr)

    def send(self, frames) -> bool:
        try:
            self.dealer.send_multipart(frames, zmq.NOBLOCK)
            return True
        except zmq.Again:  # not connected right now; heartbeats and HELLO are sent again anyway
            return False

    def ready(self) -> None:
        s = self.config
        self.send(msg.pack_ready(s.credit, os.getpid(), s.device))

    def _hello(self) -> None:
        s = self.config
        self.send(msg.pack_hello(s.fingerprint, socket.gethostname(), os.getpid(), s.device, s.local))

    def register(self) -> Optional[msg.Control]:
        """HELLO until WELCOME (returned), REJECT (raised) or stop (None); backoff 1, 2, 4 s, then every BACKOFF_MAX_SECONDS."""
        dealer = self.dealer
        backoff, next_hello = 1.0, 0.0
        while self.state.alive():
            if time.monotonic() >= next_hello:
                self._hello()
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

    def io_loop(self, done_pull, incoming) -> None:
        """The io thread owns the DEALER: heartbeats, registration again, batches in, DONE out. It
        never waits on anything else (another thread parses and tokenizes a batch: ``incoming`` is
        the worker's Inbox, or any queue), so a heartbeat goes out every HEARTBEAT_SECONDS however
        large the batches. Each heartbeat names
        every batch held (received, DONE not sent yet), those whose results are still leaving, and
        the mark of the last PONG: the server sends again what is not held, and results that do
        not reach the sink soon after they left (see Scheduler.seen)."""
        s, state, dealer = self.config, self.state, self.dealer
        poller = zmq.Poller()
        poller.register(dealer, zmq.POLLIN)
        poller.register(done_pull, zmq.POLLIN)
        next_beat, last_contact = 0.0, time.monotonic()
        registering, next_hello, backoff = False, 0.0, 1.0
        held: Set[int] = set()
        pong: Optional[int] = None
        undelivered: List[int] = []  # DONE the server could not take yet (not connected right now)
        while state.alive():
            now = time.monotonic()
            while undelivered and self.send(msg.pack_done(undelivered[0])):
                held.discard(undelivered.pop(0))
            if not registering and now >= next_beat:
                self.send(msg.pack_heartbeat(state.computing, sorted(held), pong, state.still_leaving(),
                                             busy=round(state.busy_seconds, 6)))
                next_beat = now + msg.HEARTBEAT_SECONDS
            if not registering and now - last_contact > s.server_timeout:
                self.logger.warning('no word from the server for %.0fs; registering again', now - last_contact)
                registering, next_hello, backoff, pong = True, 0.0, 1.0, None
                self._forget_work(incoming, held, undelivered)
            if registering and now >= next_hello:
                self._hello()
                next_hello, backoff = now + backoff, min(BACKOFF_MAX_SECONDS, backoff * 2)
            events = dict(poller.poll(POLL_MS))
            if done_pull in events:
                batch_id = int(done_pull.recv())
                if batch_id in held and batch_id not in undelivered:  # else the server forgot it
                    if self.send(msg.pack_done(batch_id)):
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
                    incoming.put_nowait((state.generation, batch_id, frames, time.monotonic()))
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
                self.ready()
                self.logger.info('registered with the server again')
            elif control.kind == msg.REJECT:
                self.logger.error('the server refused this worker: %s', control.reason)
                state.rejected = True
                state.leaving.set()

    def _forget_work(self, incoming: 'queue.Queue', held: Set[int], undelivered: list) -> None:
        """The server forgot us: the batches we hold are being computed elsewhere; drop them (the
        other threads skip work of an older generation)."""
        self.state.generation += 1
        held.clear()
        undelivered.clear()
        self.state.forget_results()
        while True:
            try:
                incoming.get_nowait()
            except queue.Empty:
                return
