"""Ventilator: the socket loop in front of the scheduler. Runs in the BertServer thread.

Sockets (created in ``run``):
    PULL    binds tcp://*:port           requests from clients (PUSH)
    ROUTER  binds ``backend``            workers (DEALER): HELLO, READY, HEARTBEAT, DONE, FATAL in;
            (and tcp://*:port_worker)    WELCOME, REJECT, PONG, REGISTER_AGAIN, BATCH out
    PULL    binds ``feedback``           the sink (PUSH): CONFIRM, FINISHED
    PUSH    connects to ``sink``         REGISTER, JSON_REPLY, FAIL

Every worker, local or remote, says HELLO with the fingerprint of its model and flags; a different
fingerprint is refused with the reason. A worker the ventilator does not know (the server restarted,
or declared it lost) is asked to register again.

Decisions live elsewhere: the Scheduler (queues, batches, pieces in flight, deadlines) and the
Supervisor (processes, restarts). The loop only turns messages into their calls and their results
into messages. A malformed message is logged and dropped.

Stopping (TERMINATE, SIGTERM, Ctrl-C, ``close()``) drains: new requests are refused with "server
shutting down", queued and in-flight ones finish within ``drain_timeout``, whatever is left then is
failed with that reason, and the loop ends once the sink has answered everything (or after a grace).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Dict, Optional

import zmq

from bert_serving.client.errors import ProtocolError
from bert_serving.client.protocol import Command, ErrorCode, unpack_request
from bert_serving.client.errors import BadRequest
from bert_serving.client.validation import parse_payload

from ..security import AuthConfig, bind_address, may_terminate, peer_of
from . import messages as msg
from .scheduler import Refused, Scheduler
from .statistics import ServerStatistic
from .supervisor import Supervisor

__all__ = ['Ventilator', 'Addresses']

POLL_MS = 50
CHECK_SECONDS = 0.2  # how often processes, heartbeats and deadlines are checked
MAX_READS = 256  # client messages handled per turn, so workers and feedback are never starved
FINAL_GRACE_SECONDS = 3.0  # after the drain: time for the sink to answer the failed rest


@dataclass(frozen=True)
class Addresses:
    """Where the sockets bind or connect. ``port_worker`` (ventilator) and ``port_worker_sink`` (the
    sink's results port) are set only when remote workers may join."""
    port: int
    backend: str
    feedback: str
    sink: str
    bind_host: str = '*'
    port_worker: Optional[int] = None
    port_worker_sink: Optional[int] = None


@dataclass
class WorkerInfo:
    """A worker the ventilator knows, for routing and status."""
    name: str
    label: str
    host: str
    device: str
    remote: bool
    state: str = 'loading'  # loading -> ready
    since: float = field(default_factory=time.time)


class Ventilator:
    """Args:
        server: the BertServer (stop flag, readiness, failure, describe()).
        scheduler / supervisor: the state this loop drives.
        addresses: sockets.
        num_worker: workers to wait for before the server is ready.
        max_request_bytes: largest request payload accepted.
        request_timeout: seconds each accepted request may take (None: no bound); the sink enforces it.
        drain_timeout: seconds queued and in-flight requests get to finish when stopping.
    """

    def __init__(self, server, scheduler: Scheduler, supervisor: Supervisor, addresses: Addresses, *,
                 num_worker: int, max_request_bytes: int, request_timeout, drain_timeout: float,
                 fingerprint: str, show_tokens_to_client: bool = False, auth: AuthConfig = AuthConfig(),
                 secure=lambda sock: None):
        self.server = server
        self.logger = server.logger
        self.scheduler = scheduler
        self.supervisor = supervisor
        self.addresses = addresses
        self.num_worker = num_worker
        self.max_request_bytes = max_request_bytes
        self.request_timeout = request_timeout
        self.drain_timeout = drain_timeout
        self.fingerprint = fingerprint
        self.show_tokens_to_client = show_tokens_to_client
        self.auth = auth
        self.secure = secure  # applies the server's Curve keys to a socket before it binds TCP
        self.stat = ServerStatistic()
        self.known: Dict[bytes, WorkerInfo] = {}

    def run(self, ctx: zmq.Context) -> None:
        a = self.addresses
        frontend, backend, feedback = ctx.socket(zmq.PULL), ctx.socket(zmq.ROUTER), ctx.socket(zmq.PULL)
        self.backend = backend
        self.to_sink = ctx.socket(zmq.PUSH)
        sockets = (frontend, backend, feedback, self.to_sink)
        try:
            for sock in sockets:
                sock.setsockopt(zmq.LINGER, 0)
            frontend.setsockopt(zmq.MAXMSGSIZE, 4 * self.max_request_bytes)
            backend.setsockopt(zmq.ROUTER_MANDATORY, 1)
            backend.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a worker that reconnects keeps its identity
            self.secure(frontend)
            frontend.bind(bind_address(self.auth, a.port))
            backend.bind(a.backend)  # ipc first: an address keeps the options set before its bind
            if a.port_worker is not None:
                self.secure(backend)
                backend.setsockopt(zmq.HEARTBEAT_IVL, 1000)  # notice a remote worker's cut link
                backend.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
                backend.bind(bind_address(self.auth, a.port_worker))
            feedback.bind(a.feedback)
            self.to_sink.connect(a.sink)
            for worker_id in range(self.num_worker):
                self.supervisor.start_worker(worker_id)
            if self.num_worker == 0:
                self.server.mark_ready()  # a pure front: remote workers join when they come
            self._loop(frontend, backend, feedback)
            self.to_sink.setsockopt(zmq.LINGER, 2000)  # let the last FAILs reach the sink
        finally:
            for sock in sockets:
                sock.close()

    # -- the loop --------------------------------------------------------------------------------
    def _loop(self, frontend, backend, feedback) -> None:
        poller = zmq.Poller()
        for sock in (frontend, backend, feedback):
            poller.register(sock, zmq.POLLIN)
        next_check = 0.0
        drain_until = final_until = None
        while True:
            events = dict(poller.poll(POLL_MS))
            if feedback in events:
                self._read(feedback, self._on_feedback)
            if backend in events:
                self._read(backend, self._on_worker)
            if frontend in events:
                self._read(frontend, self._on_client, MAX_READS, copy=False)  # frames: peer key and address
            self._dispatch(backend)
            now = time.monotonic()
            if now >= next_check:
                self._check()
                next_check = now + CHECK_SECONDS
            if not self.server.stopping:
                continue
            # Draining: finish what was accepted, then fail the rest, then leave.
            if drain_until is None:
                self.scheduler.stop_intake()
                dead_sink = self.supervisor.dead_service() is not None
                drain_until = now if (self.server.failure or dead_sink) else now + self.drain_timeout
                if self.scheduler.requests:
                    self.logger.info('stopping: %d requests in progress get up to %.0fs',
                                     len(self.scheduler.requests), max(0.0, drain_until - now))
            if final_until is None and (not self.scheduler.requests or now >= drain_until):
                reason = (f'server stopped: {self.server.failure}' if self.server.failure else
                          f'server shutting down: the request did not finish within -drain_timeout '
                          f'{self.drain_timeout:g}s')
                for client, req_id, serial in self.scheduler.open_requests():
                    self._fail(client, req_id, reason, code=ErrorCode.SHUTTING_DOWN, serial=serial)
                final_until = now + (0 if self.supervisor.dead_service() else FINAL_GRACE_SECONDS)
            if final_until is not None and (not self.scheduler.requests or now >= final_until):
                return

    def _read(self, sock, handle, limit: int = 100_000, copy: bool = True) -> None:
        for _ in range(limit):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=copy)
            except zmq.Again:
                return
            try:
                handle(frames)
            except msg.BadMessage as e:
                self.logger.warning('dropped a malformed internal message: %s', e)
            except Exception:  # noqa: BLE001 - one bad message must never stop the server
                self.logger.exception('dropped a message that could not be handled')

    def _fail(self, client: bytes, req_id: int, message: str, *, code: str, serial=None) -> None:
        self.to_sink.send_multipart(msg.pack_fail(client, req_id, message, code=code, serial=serial))

    # -- clients ---------------------------------------------------------------------------------
    def _on_client(self, zmq_frames) -> None:
        first = zmq_frames[0] if zmq_frames else None
        frames = [f.bytes for f in zmq_frames]
        try:
            req = unpack_request(frames)
        except ProtocolError as e:
            who, req_id = getattr(e, 'identity', None), getattr(e, 'req_id', None)
            self.logger.warning('malformed request from %r: %s', (who or b'?')[:40], e)
            if who is not None and req_id is not None:
                self._fail(who, req_id, str(e), code=ErrorCode.BAD_REQUEST)
            return
        command = req.command
        self.stat.update(req.identity, req.msg_len if command is None else 0, command is not None)
        if command == Command.TERMINATE:
            if not may_terminate(self.auth, first):
                self.logger.warning('ignored a TERMINATE from %s: -no_remote_terminate', peer_of(first))
                return
            self.logger.info('termination requested by %s', peer_of(first))
            self.server.request_stop()
        elif command in (Command.SHOW_CONFIG, Command.SHOW_STATUS):
            statistic = self.stat.value if command == Command.SHOW_STATUS else None
            snapshot = dict(self.scheduler.snapshot(), workers=self.workers_status())
            info = self.server.describe(req.identity, statistic, snapshot)
            self.to_sink.send_multipart(msg.pack_json_reply(req.identity, req.req_id,
                                                            json.dumps(info, default=str).encode()))
        else:
            try:
                texts, is_tokenized, show_tokens = parse_payload(req.payload, req.msg_len, self.max_request_bytes)
                serial = self.scheduler.accept(req.identity, req.req_id, texts, is_tokenized,
                                               show_tokens or self.show_tokens_to_client)
            except BadRequest as e:
                self.logger.warning('bad request %d from %r: %s', req.req_id, req.identity[:40], e)
                self._fail(req.identity, req.req_id, str(e), code=ErrorCode.BAD_REQUEST)
                return
            except Refused as e:
                self.logger.info('request %d from %r refused: %s', req.req_id, req.identity[:40], e)
                self.to_sink.send_multipart(msg.pack_fail(req.identity, req.req_id, str(e), code=e.code))
                return
            self.to_sink.send_multipart(msg.pack_register(req.identity, req.req_id, len(texts), serial,
                                                          self.request_timeout))

    # -- workers ---------------------------------------------------------------------------------
    def _on_worker(self, frames) -> None:
        m = msg.unpack_worker(frames)
        if m.kind == msg.HELLO:
            self._on_hello(m)
            return
        info = self.known.get(m.identity)
        if info is None:
            self._reply(m.identity, [msg.REGISTER_AGAIN])  # a server restart, or it was declared lost
            return
        if m.kind == msg.READY:
            info.state = 'ready'
            self.scheduler.add_worker(m.identity, m.credit, info.label)
            self.logger.info('%s ready on %s (%s)', info.name, info.host, info.device)
            if sum(1 for w in self.known.values() if w.state == 'ready' and not w.remote) >= self.num_worker:
                self.server.mark_ready()
        elif m.kind == msg.FATAL:
            if not info.remote:
                self.server.fatal(f'{info.name} cannot start: {m.message}')
                return
            self.logger.error('%s on %s cannot start: %s', info.name, info.host, m.message)
            self._lose(m.identity, 'could not start')
        elif self.scheduler.seen(m.identity):
            if m.kind == msg.DONE:
                self.scheduler.done(m.identity, m.batch_id)
            elif m.kind == msg.HEARTBEAT:
                self._reply(m.identity, [msg.PONG])

    def _on_hello(self, m: msg.WorkerMessage) -> None:
        info = m.info
        local = m.identity in self.supervisor.workers
        if info['fingerprint'] != self.fingerprint:
            reason = ('its model files or engine flags differ from the server\'s (fingerprint '
                      f'{info["fingerprint"][:12]} != {self.fingerprint[:12]}); start it with the same '
                      '-model_dir and engine flags as bert-serving-start')
        elif not local and self.addresses.port_worker_sink is None:
            reason = 'this server takes no remote workers (start it with -port_worker)'
        else:
            reason = None
        if reason is not None:
            self.logger.warning('refused a worker from %s (pid %s): %s', info['host'], info['pid'], reason)
            self._reply(m.identity, msg.pack_reject(reason))
            return
        if m.identity in self.known:  # it lost us and came back: whatever it held goes to others
            self._lose(m.identity, 'registered again')
        label = self.supervisor.label(m.identity) if local else f'REMOTE-{info["host"]}-{info["pid"]}'
        name = f'WORKER-{label}' if local else label
        self.known[m.identity] = WorkerInfo(name, label, info['host'], info['device'], remote=not local)
        self.logger.info('%s joined from %s (%s)', name, info['host'], info['device'])
        self._reply(m.identity, msg.pack_welcome(self.addresses.sink if local else None,
                                                 None if local else self.addresses.port_worker_sink))

    def _reply(self, identity: bytes, frames) -> None:
        try:
            self.backend.send_multipart([identity] + list(frames), zmq.NOBLOCK)
        except zmq.ZMQError as e:  # gone already; it registers again when it is back
            self.logger.debug('cannot answer worker %r: %s', identity[:40], e)

    def _lose(self, identity: bytes, reason: str) -> None:
        """Forgets a worker: its unconfirmed pieces are queued again (or their requests failed)."""
        self.known.pop(identity, None)
        for f in self.scheduler.remove_worker(identity, reason):
            self._fail(f.client, f.req_id, f.message, code=ErrorCode.FAILED, serial=f.serial)

    def _dispatch(self, backend) -> None:
        for batch in self.scheduler.take_batches():
            try:
                backend.send_multipart([batch.worker] + msg.pack_batch(batch.batch_id, batch.pieces))
            except zmq.ZMQError as e:  # not connected right now: retry shortly, maybe elsewhere
                self.logger.warning('cannot send a batch to WORKER-%s (%s); queued again',
                                    self.supervisor.label(batch.worker), e)
                self.scheduler.send_failed(batch)

    def _on_feedback(self, frames) -> None:
        fb = msg.unpack_feedback(frames)
        if fb.kind == msg.CONFIRM:
            self.scheduler.confirm(fb.ids)
        else:
            self.scheduler.finished(fb.ids)

    def _check(self) -> None:
        if self.server.stopping and self.server.failure:
            return
        reason = self.supervisor.dead_service()
        if reason is not None:
            self.server.fatal(reason)
            return
        dead = self.supervisor.dead_workers()
        lost = dead + [item for item in self.scheduler.overdue() if item[0] not in dict(dead)]
        for identity, why in lost:
            info = self.known.get(identity)
            if info is not None and info.remote:
                self.logger.error('%s on %s %s; its batches go to other workers', info.name, info.host, why)
            self._lose(identity, why)
            if self.server.stopping or identity not in self.supervisor.workers:
                continue  # no new workers while stopping; a remote one comes back by itself
            stop = self.supervisor.replace(identity, why)
            if stop is not None:
                self.server.fatal(stop)
                return

    def workers_status(self) -> list:
        """Every known worker: name, host, device, state, batches served (for SHOW_STATUS)."""
        batches = self.scheduler.batches_per_worker
        return [{'name': w.name, 'host': w.host, 'device': w.device, 'state': w.state, 'remote': w.remote,
                 'batches': batches.get(w.label, 0)} for w in self.known.values()]
