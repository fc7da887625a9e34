"""Ventilator: the socket loop in front of the scheduler. Runs in the BertServer thread.

Sockets (created in ``run``):
    PULL    binds tcp://*:port            requests from clients (PUSH)
    ROUTER  binds ``backend`` (ipc)       local workers (DEALER): HELLO, READY, HEARTBEAT, DONE, FATAL in;
    ROUTER  binds tcp://*:port_worker     remote workers, the same   WELCOME, REJECT, PONG, REGISTER_AGAIN,
                                                                     BATCH out
    PULL    binds ``feedback``            the sink (PUSH): CONFIRM, FINISHED (also once a second, empty)
    PUSH    connects to ``sink``          REGISTER, JSON_REPLY, STATUS, FAIL; never blocks (an outbox holds
                                          what the sink cannot take yet)

Every worker says HELLO with the fingerprint of its model and flags, on its own socket; the
WorkerRegistry decides who is in. A remote worker the ventilator does not know (the server restarted,
or declared it lost) is asked to register again.

Clients are told apart by identity and, with ``-auth_dir``, by the Curve key their request came with:
the sink answers on a topic only that key's subscription matches. An identity the sink could not
publish to (empty, over 256 bytes, holding a NUL) is refused and logged, never stored. Each piece
handed to a worker carries a tag (``messages.piece_tag``) for that worker's channel; the sink takes
its RESULT or FAIL only with that tag.

Decisions live elsewhere: the Scheduler (queues, batches, pieces in flight, deadlines), the
Supervisor (processes, restarts) and the WorkerRegistry. The loop only turns messages into their calls
and their results into messages. A malformed message is logged and dropped.

Stopping (TERMINATE, SIGTERM, Ctrl-C, ``close()``) drains: new requests are refused with "server
shutting down", queued and in-flight ones finish within ``drain_timeout``, whatever is left then is
failed with that reason, and the loop ends once the sink has answered everything (or after a grace).
"""
from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Optional

import zmq

from bert_serving.client.errors import BadRequest, ProtocolError
from bert_serving.client.protocol import MAX_IDENTITY_BYTES, Command, ErrorCode, unpack_request
from bert_serving.client.validation import parse_payload

from ..log import sanitize_for_log as clean
from ..security import WORKER_DOMAIN, AuthConfig, bind_address
from . import messages as msg
from .peers import may_terminate, peer_of
from .publisher import connection_property, valid_identity
from .registry import WorkerRegistry
from .request_queue import Refused
from .scheduler import Scheduler
from .statistics import ServerStatistic
from .supervisor import Supervisor

__all__ = ['Ventilator', 'Addresses']

POLL_MS = 50
CHECK_SECONDS = 0.2  # how often processes, heartbeats and deadlines are checked
MAX_READS = 256  # client messages handled per turn, so workers and feedback are never starved
FINAL_GRACE_SECONDS = 3.0  # after the drain: time for the sink to answer the failed rest
SINK_SILENCE_SECONDS = 15.0  # a sink that sends no feedback this long is stuck (stopped, wedged)
MAX_OUTBOX = 100_000  # messages waiting for the sink; beyond, the sink is declared stuck
WORKER_MAX_MSG_BYTES = 1 << 20  # what a worker sends the ventilator is small; refuse anything bigger
MAX_LOGGED_REFUSALS = 20  # bad identities logged one by one; then every 1000th
FATAL_CHARS = 2000  # of a worker's own error message in the log (a worker's host or device: LOGGED_CHARS)


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


class Ventilator:
    """Args:
        server: the BertServer (stop flag, readiness, failure, describe()).
        scheduler / supervisor: the state this loop drives.
        addresses: sockets.
        num_worker: local workers to wait for before the server is ready.
        max_request_bytes: largest request payload accepted.
        request_timeout: seconds each accepted request may go without progress (None: no bound); the
            sink enforces it.
        drain_timeout: seconds queued and in-flight requests get to finish when stopping.
        fingerprint: what every worker must match to join.
        show_tokens_to_client: send tokens with every result.
        auth: who may reach the TCP sockets; ``secure(sock, domain)`` applies it to a socket before it binds.
        tag_secret: the key of the pieces' tags, shared with the sink (random per server).
    """

    def __init__(self, server, scheduler: Scheduler, supervisor: Supervisor, addresses: Addresses, *,
                 num_worker: int, max_request_bytes: int, request_timeout, drain_timeout: float,
                 fingerprint: str, show_tokens_to_client: bool = False, auth: AuthConfig = AuthConfig(),
                 secure=lambda sock, domain=None: None, tag_secret: bytes = b''):
        self.server = server
        self.logger = server.logger
        self.scheduler = scheduler
        self.supervisor = supervisor
        self.addresses = addresses
        self.num_worker = num_worker
        self.max_request_bytes = max_request_bytes
        self.request_timeout = request_timeout
        self.drain_timeout = drain_timeout
        self.show_tokens_to_client = show_tokens_to_client
        self.auth = auth
        self.secure = secure
        self.tag_secret = tag_secret or os.urandom(32)
        self.refused_identities = 0
        self.dropped_by_sink = 0  # worker messages the sink refused (bad tag, wrong port)
        self.stat = ServerStatistic()
        self.registry = WorkerRegistry(fingerprint, supervisor.label, addresses.port_worker is not None)
        self.outbox: deque = deque()  # for the sink, when it cannot take more right now
        self.registers: list = []  # requests accepted in this read of the clients, one REGISTER after it
        self.last_feedback = time.monotonic()
        self.remote = None

    def run(self, ctx: zmq.Context) -> None:
        a = self.addresses
        frontend, feedback = ctx.socket(zmq.PULL), ctx.socket(zmq.PULL)
        self.local, self.to_sink = ctx.socket(zmq.ROUTER), ctx.socket(zmq.PUSH)
        if a.port_worker is not None:
            self.remote = ctx.socket(zmq.ROUTER)
        sockets = [s for s in (frontend, self.local, self.remote, feedback, self.to_sink) if s is not None]
        try:
            for sock in sockets:
                sock.setsockopt(zmq.LINGER, 0)
            # A frame a little over -max_request_bytes still gets its clear "too large" error; a peer
            # that sends much more is cut off before the frame is read into memory.
            frontend.setsockopt(zmq.MAXMSGSIZE, 2 * self.max_request_bytes + 4096)
            self.secure(frontend)
            frontend.bind(bind_address(self.auth, a.port))
            self.local.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self.local.bind(a.backend)
            if self.remote is not None:
                for option, value in ((zmq.ROUTER_MANDATORY, 1), (zmq.MAXMSGSIZE, WORKER_MAX_MSG_BYTES),
                                      (zmq.ROUTER_HANDOVER, 1),  # a worker that reconnects keeps its identity
                                      (zmq.HEARTBEAT_IVL, 1000), (zmq.HEARTBEAT_TIMEOUT, 5000)):  # cut links
                    self.remote.setsockopt(option, value)
                self.secure(self.remote, domain=WORKER_DOMAIN)
                self.remote.bind(bind_address(self.auth, a.port_worker))
            feedback.bind(a.feedback)
            self.to_sink.connect(a.sink)
            for worker_id in range(self.num_worker):
                self.supervisor.start_worker(worker_id)
            if self.num_worker == 0:
                self.server.mark_ready()  # a pure front: remote workers join when they come
            self._loop(frontend, feedback)
            self.to_sink.setsockopt(zmq.LINGER, 2000)  # let the last FAILs reach the sink
        finally:
            for sock in sockets:
                sock.close()

    # -- the loop --------------------------------------------------------------------------------
    def _loop(self, frontend, feedback) -> None:
        poller = zmq.Poller()
        for sock in (frontend, self.local, self.remote, feedback):
            if sock is not None:
                poller.register(sock, zmq.POLLIN)
        next_check = 0.0
        drain_until = final_until = None
        while True:
            wake = self.scheduler.wake_at()  # a worker waits for its clients to come back (Scheduler)
            timeout = POLL_MS
            if wake is not None:
                timeout = min(POLL_MS, math.ceil(max(0.0, wake - self.scheduler.clock()) * 1000))
            events = dict(poller.poll(timeout))
            self._flush()
            if feedback in events:
                self._read(feedback, self._on_feedback)
            for sock, remote in ((self.local, False), (self.remote, True)):
                if sock in events:  # frames: the remote peer's Curve key
                    self._read(sock, lambda frames, r=remote: self._on_worker(frames, r), copy=not remote)
            if frontend in events:
                self._read(frontend, self._on_client, MAX_READS, copy=False)  # frames: peer key and address
                self._send_registers()
            self._dispatch()
            now = time.monotonic()
            if now >= next_check:
                self._check(now)
                next_check = now + CHECK_SECONDS
            if not self.server.stopping:
                continue
            # Draining: finish what was accepted, then fail the rest, then leave.
            sink_gone = self.supervisor.dead_service() is not None or self.server.failure is not None
            if drain_until is None:
                self.scheduler.stop_intake()
                drain_until = now if sink_gone else now + self.drain_timeout
                if self.scheduler.requests:
                    self.logger.info('stopping: %d requests in progress get up to %.0fs',
                                     len(self.scheduler.requests), max(0.0, drain_until - now))
            if final_until is None and (not self.scheduler.requests or now >= drain_until):
                if self.supervisor.dead_service() is None:  # a dead sink could deliver nothing
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

    # -- to the sink: never blocking -------------------------------------------------------------
    def _send_sink(self, frames) -> None:
        if self.outbox or not self._try_send(frames):
            self.outbox.append(frames)
            if len(self.outbox) > MAX_OUTBOX and not self.server.stopping:
                self.server.fatal(f'the SINK does not take messages ({len(self.outbox)} waiting): stuck?')

    def _send_registers(self) -> None:
        """Tells the sink, in one message, of the requests accepted in the last read of the clients."""
        if self.registers:
            self._send_sink(msg.pack_registers(self.registers))
            self.registers = []

    def _try_send(self, frames) -> bool:
        try:
            self.to_sink.send_multipart(frames, zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def _flush(self) -> None:
        while self.outbox and self._try_send(self.outbox[0]):
            self.outbox.popleft()

    def _fail(self, client: bytes, req_id: int, message: str, *, code: str, serial=None, key: bytes = b'',
              received: Optional[float] = None, outcome: Optional[str] = None) -> None:
        """Fails a request; ``received`` (refused before it was registered) and ``outcome`` are for the
        sink's metrics."""
        self._send_sink(msg.pack_fail(client, req_id, message, code=code, serial=serial, key=key, received=received,
                                      outcome=outcome))

    def _fail_lost(self, failures) -> None:
        """Fails the requests whose pieces were lost with their workers too often."""
        for f in failures:
            self._fail(f.client, f.req_id, f.message, code=ErrorCode.FAILED, serial=f.serial, outcome='worker_lost')

    # -- clients ---------------------------------------------------------------------------------
    def _curve_key(self, frame) -> bytes:
        """The z85 key a client's message came with (empty without -auth_dir)."""
        return (connection_property(frame, 'User-Id') or b'') if self.auth.enabled and frame is not None else b''

    def _refuse_identity(self, identity: bytes, first) -> None:
        self.refused_identities += 1
        if self.refused_identities <= MAX_LOGGED_REFUSALS or self.refused_identities % 1000 == 0:
            self.logger.warning('refused a request from %s: its identity of %d bytes is empty, longer than %d bytes '
                                'or holds a NUL, so no reply could reach it (%d refused so far)', peer_of(first),
                                len(identity), MAX_IDENTITY_BYTES, self.refused_identities)

    def _on_client(self, zmq_frames) -> None:
        received = time.monotonic()  # the request's time in the server starts (the sink's metrics)
        first = zmq_frames[0] if zmq_frames else None
        if first is not None and not valid_identity(first.bytes):
            self._refuse_identity(first.bytes, first)
            return
        key = self._curve_key(first)
        try:
            req = unpack_request([f.bytes for f in zmq_frames])
        except ProtocolError as e:
            who, req_id = getattr(e, 'identity', None), getattr(e, 'req_id', None)
            self.logger.warning('malformed request from %r: %s', (who or b'?')[:40], e)
            if who is not None and req_id is not None:
                self._fail(who, req_id, str(e), code=ErrorCode.BAD_REQUEST, key=key, received=received)
            return
        command = req.command
        self.stat.update(req.identity, req.msg_len if command is None else 0, command is not None)
        if command == Command.TERMINATE:
            if not may_terminate(self.auth, first):
                self.logger.warning('ignored a TERMINATE from %s: only this machine may send one (-auth_dir without '
                                    '-remote_terminate, or -no_remote_terminate)', peer_of(first))
                return
            self.logger.info('termination requested by %s', peer_of(first))
            self.server.request_stop()
        elif command in (Command.SHOW_CONFIG, Command.SHOW_STATUS):
            statistic = self.stat.value if command == Command.SHOW_STATUS else None
            workers = self.registry.status(self.scheduler.batches_per_worker, self.scheduler.sequences_per_worker)
            snapshot = dict(self.scheduler.snapshot(), workers=workers, num_dropped_worker_message=self.dropped_by_sink,
                            num_refused_identity=self.refused_identities, lost_workers=dict(self.stat.lost_workers),
                            worker_restarts=dict(self.stat.worker_restarts),
                            num_worker_restart=sum(self.stat.worker_restarts.values()))
            info = json.dumps(self.server.describe(req.identity, statistic, snapshot), default=str).encode()
            pack = msg.pack_status if command == Command.SHOW_STATUS else msg.pack_json_reply
            self._send_sink(pack(req.identity, req.req_id, info, key))
        else:
            try:
                texts, is_tokenized, show_tokens = parse_payload(req.payload, req.msg_len, self.max_request_bytes)
                serial = self.scheduler.accept(req.identity, req.req_id, texts, is_tokenized,
                                               show_tokens or self.show_tokens_to_client, size=len(req.payload))
            except BadRequest as e:
                self.logger.warning('bad request %d from %r: %s', req.req_id, req.identity[:40], e)
                self._fail(req.identity, req.req_id, str(e), code=ErrorCode.BAD_REQUEST, key=key, received=received)
                return
            except Refused as e:
                self.logger.info('request %d from %r refused: %s', req.req_id, req.identity[:40], e)
                self._fail(req.identity, req.req_id, str(e), code=e.code, key=key, received=received)
                return
            self.registers.append(msg.register_entry(req.identity, req.req_id, len(texts), serial, self.request_timeout,
                                                     key, received))

    # -- workers ---------------------------------------------------------------------------------
    def _on_worker(self, frames, remote: bool) -> None:
        channel = msg.LOCAL_CHANNEL
        if remote:  # zmq.Frames: the Curve key of the peer names its channel
            channel = msg.remote_channel(self._curve_key(frames[0]))
            frames = [f.bytes for f in frames]
        m = msg.unpack_worker(frames)
        if m.kind == msg.HELLO:
            self._on_hello(m, remote, channel)
            return
        info = self.registry.get(m.identity, remote)
        if info is not None and info.channel != channel:  # another key speaks for this worker's identity
            self.logger.warning('dropped a %s for %s from another Curve key', m.kind.decode('latin-1'), clean(info.name))
            return
        if info is None:
            if remote:  # a server restart, or it was declared lost: it must say HELLO again
                self._reply(m.identity, remote, [msg.REGISTER_AGAIN])
            return
        if m.kind == msg.READY:
            credit = self.registry.ready(m.identity, m.credit)
            if credit is None:
                return
            self._fail_lost(self.scheduler.add_worker(m.identity, credit, info.label, info.name, info.remote))
            self.logger.info('%s ready on %s (%s)', clean(info.name), clean(info.host), clean(info.device))
            if self.registry.num_local_ready() >= self.num_worker:
                self.server.mark_ready()
        elif m.kind == msg.FATAL:
            if not remote:
                self.server.fatal(f'{clean(info.name)} cannot start: {clean(m.message, FATAL_CHARS)}')
                return
            self.logger.error('%s on %s cannot start: %s', clean(info.name), clean(info.host),
                              clean(m.message, FATAL_CHARS))
            self._lose(m.identity, 'could not start')
        elif m.kind == msg.HEARTBEAT and self.scheduler.seen(m.identity, m.batch_id, m.holds, m.pong, m.sending):
            # The mark: every batch sent to it so far goes before this PONG (see Scheduler.seen).
            self._reply(m.identity, remote, msg.pack_pong(self.scheduler.mark(m.identity)))
            self.registry.busy(m.identity, m.busy)
        elif m.kind == msg.DONE and self.scheduler.seen(m.identity):
            self.scheduler.done(m.identity, m.batch_id)
        elif m.kind == msg.HEARTBEAT and info.state == 'loading':
            self._reply(m.identity, remote, msg.pack_pong())

    def _on_hello(self, m: msg.WorkerMessage, remote: bool, channel: bytes) -> None:
        if self.registry.get(m.identity, remote) is not None:  # it lost us and came back
            self._lose(m.identity, 'registered again')
        reason = self.registry.hello(m.identity, m.info, remote, channel)
        if reason is not None:
            self.logger.warning('refused a worker from %s (pid %s): %s', clean(m.info['host']), clean(m.info['pid']),
                                clean(reason, FATAL_CHARS))
            self._reply(m.identity, remote, msg.pack_reject(reason))
            return
        info = self.registry.get(m.identity, remote)
        self.logger.info('%s joined from %s (%s)', clean(info.name), clean(info.host), clean(info.device))
        self._reply(m.identity, remote, msg.pack_welcome(None if remote else self.addresses.sink,
                                                         self.addresses.port_worker_sink if remote else None,
                                                         self.scheduler.cfg.batch_timeout))

    def _reply(self, identity: bytes, remote: bool, frames) -> None:
        try:
            (self.remote if remote else self.local).send_multipart([identity] + list(frames), zmq.NOBLOCK)
        except zmq.ZMQError as e:  # gone already; it registers again when it is back
            self.logger.debug('cannot answer worker %r: %s', identity[:40], e)

    def _lose(self, identity: bytes, reason: str) -> None:
        """Forgets a worker: its unconfirmed pieces are queued again (or their requests failed)."""
        if self.registry.forget(identity) is not None:
            self.stat.lost_worker(reason)
        self._fail_lost(self.scheduler.remove_worker(identity, reason))

    def _dispatch(self) -> None:
        for batch in self.scheduler.take_batches():
            info = self.registry.known.get(batch.worker)
            sock = self.remote if info is not None and info.remote else self.local
            channel = msg.LOCAL_CHANNEL if info is None else info.channel
            for p in batch.pieces:
                p.tag = msg.piece_tag(self.tag_secret, channel, p.client, p.req_id, p.serial, p.piece_id)
            try:
                sock.send_multipart([batch.worker] + msg.pack_batch(batch.batch_id, batch.pieces), zmq.NOBLOCK)
            except zmq.ZMQError as e:  # not connected right now: retry shortly, maybe elsewhere
                self.logger.warning('cannot send a batch to %s (%s); queued again',
                                    clean(info.name) if info else batch.worker[:40], e)
                self.scheduler.send_failed(batch)

    def _on_feedback(self, frames) -> None:
        self.last_feedback = time.monotonic()
        fb = msg.unpack_feedback(frames)
        if fb.kind == msg.CONFIRM:
            self.scheduler.confirm(fb.ids)
        else:
            self.scheduler.finished(fb.ids)
            self.dropped_by_sink = fb.dropped

    def _check(self, now: float) -> None:
        if self.server.stopping and self.server.failure:
            return
        reason = self.supervisor.dead_service()
        if reason is not None and self.server.stopping and self.supervisor.services_left_cleanly():
            # A stop that reached the whole process group (Ctrl-C in a terminal, kill -TERM -PGID) stops
            # the sink too: not a failure. The drain sees the sink gone and ends at once.
            return
        if reason is None and now - self.last_feedback > SINK_SILENCE_SECONDS:
            reason = f'the SINK sent nothing for {now - self.last_feedback:.0f}s (stopped or stuck)'
        if reason is not None:
            self.server.fatal(reason)
            return
        dead = self.supervisor.dead_workers()
        lost = dead + [item for item in self.scheduler.overdue() if item[0] not in dict(dead)]
        for identity, why in lost:
            info = self.registry.known.get(identity)
            if info is not None and info.remote:
                self.logger.error('%s on %s %s; its batches go to other workers', clean(info.name),
                                  clean(info.host), why)
            self._lose(identity, why)
            if self.server.stopping or identity not in self.supervisor.workers:
                continue  # no new workers while stopping; a remote one comes back by itself
            self.stat.worker_restarted(why)
            self.supervisor.replace(identity, why)
        self.supervisor.restart_due()
