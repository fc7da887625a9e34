"""Ventilator: the socket loop in front of the scheduler. Runs in the BertServer thread.

Sockets (created in ``run``):
    PULL    binds tcp://*:port           requests from clients (PUSH)
    ROUTER  binds ``backend``            workers (DEALER): READY, HEARTBEAT, DONE, FATAL in; BATCH out
    PULL    binds ``feedback``           the sink (PUSH): CONFIRM, FINISHED
    PUSH    connects to ``sink``         REGISTER, JSON_REPLY, FAIL

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
from dataclasses import dataclass

import zmq

from bert_serving.client.errors import ProtocolError
from bert_serving.client.protocol import Command, ErrorCode, unpack_request
from bert_serving.client.validation import parse_payload
from bert_serving.client.errors import BadRequest

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
    """Where the ventilator's sockets bind or connect."""
    port: int
    backend: str
    feedback: str
    sink: str
    bind_host: str = '*'


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
                 num_worker: int, max_request_bytes: int, request_timeout, drain_timeout: float):
        self.server = server
        self.logger = server.logger
        self.scheduler = scheduler
        self.supervisor = supervisor
        self.addresses = addresses
        self.num_worker = num_worker
        self.max_request_bytes = max_request_bytes
        self.request_timeout = request_timeout
        self.drain_timeout = drain_timeout
        self.stat = ServerStatistic()

    def run(self, ctx: zmq.Context) -> None:
        a = self.addresses
        frontend, backend, feedback = ctx.socket(zmq.PULL), ctx.socket(zmq.ROUTER), ctx.socket(zmq.PULL)
        self.to_sink = ctx.socket(zmq.PUSH)
        sockets = (frontend, backend, feedback, self.to_sink)
        try:
            for sock in sockets:
                sock.setsockopt(zmq.LINGER, 0)
            frontend.setsockopt(zmq.MAXMSGSIZE, 4 * self.max_request_bytes)
            backend.setsockopt(zmq.ROUTER_MANDATORY, 1)
            frontend.bind(f'tcp://{a.bind_host}:{a.port}')
            backend.bind(a.backend)
            feedback.bind(a.feedback)
            self.to_sink.connect(a.sink)
            for worker_id in range(self.num_worker):
                self.supervisor.start_worker(worker_id)
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
                self._read(frontend, self._on_client, MAX_READS)
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

    def _read(self, sock, handle, limit: int = 100_000) -> None:
        for _ in range(limit):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
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
    def _on_client(self, frames) -> None:
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
            self.logger.info('termination requested by a client')
            self.server.request_stop()
        elif command in (Command.SHOW_CONFIG, Command.SHOW_STATUS):
            statistic = self.stat.value if command == Command.SHOW_STATUS else None
            info = self.server.describe(req.identity, statistic, self.scheduler.snapshot())
            self.to_sink.send_multipart(msg.pack_json_reply(req.identity, req.req_id,
                                                            json.dumps(info, default=str).encode()))
        else:
            try:
                texts, is_tokenized, show_tokens = parse_payload(req.payload, req.msg_len, self.max_request_bytes)
                serial = self.scheduler.accept(req.identity, req.req_id, texts, is_tokenized, show_tokens)
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
        label = self.supervisor.label(m.identity)
        if label is None:
            return  # a replaced worker's last words
        if m.kind == msg.READY:
            self.scheduler.add_worker(m.identity, m.credit, label)
            self.logger.debug('WORKER-%s ready (%s)', label, m.info)
            if len(self.scheduler.workers) >= self.num_worker:
                self.server.mark_ready()
        elif m.kind == msg.FATAL:
            self.server.fatal(f'WORKER-{label} cannot start: {m.message}')
        elif self.scheduler.seen(m.identity) and m.kind == msg.DONE:
            self.scheduler.done(m.identity, m.batch_id)

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
        lost = self.supervisor.dead_workers() + [item for item in self.scheduler.overdue()
                                                  if item[0] not in dict(self.supervisor.dead_workers())]
        for identity, why in lost:
            for f in self.scheduler.remove_worker(identity, why):
                self._fail(f.client, f.req_id, f.message, code=ErrorCode.FAILED, serial=f.serial)
            if self.server.stopping:
                continue  # no new workers while stopping
            stop = self.supervisor.replace(identity, why)
            if stop is not None:
                self.server.fatal(stop)
                return
