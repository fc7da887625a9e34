"""A real Ventilator.run() in a thread, with the test standing where its neighbours stand; test modules
import it by name (pytest puts this folder on ``sys.path``).

    test PUSH (client)    -> tcp://127.0.0.1:port          ventilator PULL
    test DEALERs (worker) -> tcp://127.0.0.1:<backend>     ventilator ROUTER  (a real Worker thread joins here too)
    test DEALERs (remote) -> tcp://127.0.0.1:port_worker   ventilator ROUTER  (``remote=True``)
    test PULL  (sink)     <- tcp://127.0.0.1:<sink>        ventilator PUSH, and the workers' results
    test PUSH  (feedback) -> inproc://feedback-N           ventilator PULL

Loopback TCP on random ports rather than inproc for what a Worker connects to: a Worker opens its own
context. Every socket has LINGER 0 and every wait is a bounded poll. The stand-in sink sends no
feedback of its own, so a test must end within the ventilator's SINK_SILENCE_SECONDS (15 s).

The BertServer and the worker processes are stand-ins (``StandInServer``, ``StandInProcess``); the
Scheduler, the Supervisor and the WorkerRegistry are the real ones.
"""
from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from typing import Dict, List, Optional

import zmq

from bert_serving.client.protocol import Command, pack_request
from bert_serving.client.security import secure_client_socket
from bert_serving.server.pipeline import messages as msg
from bert_serving.server.pipeline.request_queue import SchedulerConfig
from bert_serving.server.pipeline.scheduler import Scheduler
from bert_serving.server.pipeline.supervisor import Supervisor
from bert_serving.server.pipeline.ventilator import Addresses, Ventilator
from bert_serving.server.security import WORKER_DOMAIN, AuthConfig

__all__ = ['VentilatorHarness', 'StandInServer', 'StandInProcess', 'Records', 'wait_until', 'FINGERPRINT', 'SECRET',
           'WAIT_SECONDS']

WAIT_SECONDS = 10.0  # bound of every wait; a healthy ventilator answers within a loop turn (50 ms)
FINGERPRINT = 'f' * 64
SECRET = bytes(range(32))  # the pieces' tag key the ventilator shares with the sink
LOOPBACK = AuthConfig(bind_host='127.0.0.1')
_feedback_ids = itertools.count()


def wait_until(predicate, seconds: float = WAIT_SECONDS) -> bool:
    """Whether ``predicate()`` turned true within ``seconds`` (checked every 20 ms)."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class Records(logging.Handler):
    """Keeps every record logged to the ventilator's logger."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: List[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def messages(self, level=logging.WARNING) -> List[str]:
        return [r.getMessage() for r in list(self.records) if r.levelno >= level]


class StandInServer:
    """What the Ventilator needs of its BertServer: a logger, the stop flag, readiness and failure."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger
        self.is_ready = threading.Event()
        self.failure: Optional[str] = None
        self.stopping = False  # read by the ventilator's thread, set by the test's or by itself

    def request_stop(self) -> None:
        self.stopping = True

    def mark_ready(self) -> None:
        self.is_ready.set()

    def fatal(self, reason: str) -> None:
        self.failure, self.stopping = self.failure or reason, True

    def describe(self, client: bytes, statistic, snapshot: dict) -> dict:
        info = {'client': client.decode('latin-1')}
        if statistic is not None:  # SHOW_STATUS
            info.update(snapshot, statistic=statistic)
        return info


class StandInProcess:
    """A worker process as the Supervisor sees it; the test ends it by setting ``exitcode``."""

    def __init__(self, name: str):
        self.name = name
        self.pid = None
        self.exitcode: Optional[int] = None

    def is_alive(self) -> bool:
        return self.exitcode is None

    def kill(self) -> None:
        if self.exitcode is None:
            self.exitcode = -9

    def terminate(self) -> None:
        if self.exitcode is None:
            self.exitcode = -15

    def join(self, timeout=None) -> None:
        pass


class VentilatorHarness:
    """Args:
        free_port: the session's port picker.
        num_worker: local workers the supervisor "starts" (identities ``worker-N-0``).
        remote: bind -port_worker (and a stand-in sink for remote results on -port_worker_sink).
        auth / secure: as BertServer passes them (``secure`` applies Curve to a socket).
        ctx: the context of every socket (a test with Curve runs its authenticator on it).
        client_keys: the CurveKeys of the test's client socket, when ``auth`` has an auth_dir.
        **fields: Ventilator keywords (max_request_bytes, drain_timeout, fingerprint ...).
    """

    def __init__(self, free_port, *, num_worker: int = 1, remote: bool = False, auth: AuthConfig = LOOPBACK,
                 secure=lambda sock, domain=None: None, ctx: Optional[zmq.Context] = None, client_keys=None,
                 **fields):
        self.ctx = ctx or zmq.Context()
        self._own_ctx = ctx is None
        self.records = Records()
        self.logger = logging.getLogger(f'test.ventilator.{id(self)}')
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self.records)
        self.server = StandInServer(self.logger)
        self.spawned: List[bytes] = []
        self.processes: Dict[bytes, StandInProcess] = {}
        self.supervisor = Supervisor(self._spawn, self.logger)
        self.scheduler = Scheduler(SchedulerConfig(num_worker=max(1, num_worker), max_batch_size=8))
        self.addresses = Addresses(
            port=free_port(), backend=f'tcp://127.0.0.1:{free_port()}', sink=f'tcp://127.0.0.1:{free_port()}',
            feedback=f'inproc://feedback-{next(_feedback_ids)}', port_worker=free_port() if remote else None,
            port_worker_sink=free_port() if remote else None)
        settings = dict(max_request_bytes=10_000, request_timeout=None, drain_timeout=0.0, fingerprint=FINGERPRINT,
                        tag_secret=SECRET)
        settings.update(fields)
        self.ventilator = Ventilator(self.server, self.scheduler, self.supervisor, self.addresses,
                                     num_worker=num_worker, auth=auth, secure=secure, **settings)
        self.sockets: List[zmq.Socket] = []
        self.sink = self.socket(zmq.PULL)
        self.sink.bind(self.addresses.sink)
        self.remote_sink = None
        if remote:  # secured as the sink secures its -port_worker_sink
            self.remote_sink = self.socket(zmq.PULL)
            secure(self.remote_sink, domain=WORKER_DOMAIN)
            self.remote_sink.bind(f'tcp://127.0.0.1:{self.addresses.port_worker_sink}')
        self.client = self.socket(zmq.PUSH)
        self.client.setsockopt(zmq.SNDTIMEO, int(WAIT_SECONDS * 1000))  # no connection: zmq.Again, not a hang
        secure_client_socket(self.client, client_keys)
        self.client.connect(f'tcp://127.0.0.1:{self.addresses.port}')
        self.feedback = self.socket(zmq.PUSH)
        self.serials: List[int] = []  # of every REGISTER the stand-in sink read
        self.unread: Dict[zmq.Socket, List[msg.SinkMessage]] = {}  # read from a socket, not taken yet
        self.thread = threading.Thread(target=self.ventilator.run, args=(self.ctx,), name='ventilator', daemon=True)

    def _spawn(self, worker_id: int, generation: int):
        identity = b'worker-%d-%d' % (worker_id, generation)
        self.spawned.append(identity)
        proc = self.processes[identity] = StandInProcess(f'WORKER-{worker_id}')
        return identity, proc

    def socket(self, kind: int) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        self.sockets.append(sock)
        return sock

    def start(self) -> 'VentilatorHarness':
        self.thread.start()
        self.feedback.connect(self.addresses.feedback)  # inproc: may connect before the bind
        return self

    # -- clients ---------------------------------------------------------------------------------
    def send(self, identity: bytes, payload: bytes, req_id: int = 1, msg_len: int = 0) -> None:
        self.client.send_multipart(pack_request(identity, payload, req_id, msg_len))

    def encode(self, identity: bytes, texts: list, req_id: int = 1) -> None:
        self.send(identity, json.dumps(texts).encode(), req_id, len(texts))

    def status(self) -> dict:
        """SHOW_STATUS as the ventilator hands it to the sink (which adds its "metrics" before publishing)."""
        self.send(b'status-asker', Command.SHOW_STATUS, req_id=99)
        reply = self.sink_message(msg.STATUS)
        assert (reply.client, reply.req_id) == (b'status-asker', 99)
        return json.loads(reply.body)

    # -- the sink --------------------------------------------------------------------------------
    def sink_message(self, kind: Optional[bytes] = None, sock: Optional[zmq.Socket] = None) -> msg.SinkMessage:
        """The next message at the stand-in sink (of ``kind``; others before it are skipped)."""
        sock = sock or self.sink
        waiting = self.unread.setdefault(sock, [])
        while True:
            while not waiting:
                assert sock.poll(WAIT_SECONDS * 1000), f'no {kind!r} reached the sink'
                waiting.extend(self._read_sink(sock))
            m = waiting.pop(0)
            if kind is None or m.kind == kind:
                return m

    def _read_sink(self, sock: zmq.Socket) -> List[msg.SinkMessage]:
        """One message at the stand-in sink: its requests or pieces (a REGISTER or RESULT holds several)."""
        messages = msg.unpack_sink(sock.recv_multipart())
        self.serials.extend(m.serial for m in messages if m.kind == msg.REGISTER)
        return messages

    def confirm(self, piece_ids) -> None:
        self.feedback.send_multipart(msg.pack_confirm(piece_ids))

    def finish(self, serials) -> None:
        self.feedback.send_multipart(msg.pack_finished(serials))

    # -- workers ---------------------------------------------------------------------------------
    def dealer(self, identity: bytes, remote: bool = False, curve=None) -> zmq.Socket:
        """A raw worker socket on the local (ipc in a server; tcp here) or the remote port."""
        sock = self.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, identity)
        secure_client_socket(sock, curve)
        sock.connect(f'tcp://127.0.0.1:{self.addresses.port_worker}' if remote else self.addresses.backend)
        return sock

    @staticmethod
    def hello(dealer: zmq.Socket, fingerprint: str = FINGERPRINT, local: bool = True) -> None:
        dealer.send_multipart(msg.pack_hello(fingerprint, 'test-host', 4242, 'cpu', local))

    @staticmethod
    def reply(dealer: zmq.Socket):
        """The next message to a worker: (batch_id, pieces) for a BATCH, else a messages.Control."""
        assert dealer.poll(WAIT_SECONDS * 1000), 'the ventilator sent the worker nothing'
        frames = dealer.recv_multipart()
        return msg.unpack_batch(frames) if frames[0] == msg.BATCH else msg.unpack_control(frames)

    def join(self, dealer: zmq.Socket, credit: int = 1, remote: bool = False) -> None:
        """HELLO -> WELCOME, READY; returns once the ventilator answers a heartbeat as a ready worker's."""
        self.hello(dealer, local=not remote)
        welcome = self.reply(dealer)
        assert welcome.kind == msg.WELCOME, welcome
        dealer.send_multipart(msg.pack_ready(credit, 4242, 'cpu'))
        dealer.send_multipart(msg.pack_heartbeat(None, holds=[]))
        pong = self.reply(dealer)
        assert pong.kind == msg.PONG and pong.mark is not None, f'not ready: {pong}'

    # -- the end ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Stops the ventilator as the sink would help it: every registered request is answered
        (FINISHED) while it drains, then the thread ends."""
        self.server.request_stop()
        deadline = time.monotonic() + WAIT_SECONDS
        try:
            while self.thread.is_alive() and time.monotonic() < deadline:
                while self.sink.poll(0):
                    self._read_sink(self.sink)
                if self.serials:
                    self.finish(self.serials)
                self.thread.join(0.05)
        finally:
            alive = self.thread.is_alive()
            for sock in self.sockets:
                sock.close()
            if self._own_ctx and not alive:  # a live loop still holds its sockets: term() would wait forever
                self.ctx.term()
            self.logger.removeHandler(self.records)
        assert not alive, 'the ventilator did not stop'
