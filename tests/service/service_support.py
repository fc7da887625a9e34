"""What the service tests share besides fixtures: a handle on a running server, expected vectors,
raw protocol peers, and checks on ports and processes.

Test modules import it by name (pytest puts this folder on ``sys.path``); fixtures that build these
objects live in ``conftest.py``.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Set

import numpy as np
import pytest
import zmq

from bert_serving.server.args import get_args_parser
from bert_serving.server.service import BertServer

__all__ = ['REPLY_MS', 'SHARED_FLAGS', 'SHARED_MAX_REQUEST_BYTES', 'FAKE', 'RunningServer', 'server_args', 'Expected',
           'fake_expected', 'sentence', 'assert_port_free', 'RawPeer', 'wait_until', 'children_of', 'alive', 'paused',
           'kill_tree']

REPLY_MS = 20000  # every client in these tests gives up after this; nothing may hang a test

# The session-wide server (conftest ``shared_server``): two workers and batches of at most 4 rows,
# so most requests are split and batches mix pieces of several clients; tokens go back to clients.
SHARED_FLAGS = ('-num_worker', '2', '-max_batch_size', '4', '-show_tokens_to_client')
SHARED_MAX_REQUEST_BYTES = 1_000_000

# Pass as the model_dir of ``server_args`` / ``launch``: the server runs ``-engine fake`` (numpy vectors of
# width FAKE_WIDTH, workers ready in about a second); expected vectors come from ``fake_expected``.
FAKE = None


@dataclass
class RunningServer:
    """A started, ready BertServer and how to reach it.

    Attributes:
        server: the BertServer thread.
        port: its request port (ventilator PULL).
        port_out: its result port (sink XPUB).
    """
    server: BertServer
    port: int
    port_out: int

    def client(self, **kwargs):
        """A BertClient of this server, with a ``REPLY_MS`` timeout unless given; close it."""
        from bert_serving.client import BertClient

        kwargs.setdefault('timeout', REPLY_MS)
        return BertClient(ip='127.0.0.1', port=self.port, port_out=self.port_out, **kwargs)

    def concurrent_client(self, **kwargs):
        """A ConcurrentBertClient of this server, with a ``REPLY_MS`` timeout unless given; close it."""
        from bert_serving.client import ConcurrentBertClient

        kwargs.setdefault('timeout', REPLY_MS)
        return ConcurrentBertClient(ip='127.0.0.1', port=self.port, port_out=self.port_out, **kwargs)

    def workers(self) -> list:
        """The live worker processes (named ``WORKER-n``), oldest first."""
        return [p for p in self.server.processes if p.name.startswith('WORKER-') and p.is_alive()]


def server_args(model_dir: Optional[Path], port: int, port_out: int, flags: Sequence[str] = (), **fields):
    """Parses ``bert-serving-start`` flags for a CPU server on the given ports.

    ``model_dir`` None (``FAKE``) selects ``-engine fake``. ``fields`` are then set on the namespace
    as they are, for ServerConfig fields that have no flag (``max_request_bytes``);
    ``ServerConfig.from_namespace`` picks them up.
    """
    model = ['-engine', 'fake'] if model_dir is None else ['-model_dir', str(model_dir)]
    args = get_args_parser().parse_args(
        [*model, '-port', str(port), '-port_out', str(port_out), '-cpu', *flags])
    for name, value in fields.items():
        setattr(args, name, value)
    return args


class Expected:
    """The vectors inputs must get: the in-process engine's (Encoder or FakeEngine), one input at a
    time, memoized.

    One input alone is the reference: the server batches it with other inputs, pads it and
    splits requests, and none of that may change its vector.
    """

    def __init__(self, encoder):
        self.encoder = encoder
        self._memo: Dict[str, np.ndarray] = {}

    def one(self, text: str) -> np.ndarray:
        """float32 [D] (or [T, D] for NONE pooling) of one plain-text input."""
        if text not in self._memo:
            self._memo[text] = self.encoder.encode([text])[0][0]
        return self._memo[text]

    def many(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [B, D], row i for ``texts[i]`` (not for NONE pooling: T differs per input)."""
        return np.stack([self.one(t) for t in texts])

    def tokens(self, texts: Sequence[str]) -> List[List[str]]:
        """The word pieces of each input, [CLS] and [SEP] included."""
        return [list(f.tokens) for f in self.encoder.featurize(list(texts))]


def fake_expected(**fields) -> Expected:
    """Expected vectors of a ``-engine fake`` server started with the EngineConfig ``fields``
    (e.g. ``pooling_strategy='NONE', max_seq_len=64``): float32 [FAKE_WIDTH] per input, or
    [T, FAKE_WIDTH] with NONE pooling."""
    from bert_serving.server.config import EngineConfig
    from bert_serving.server.engine.fake import FakeEngine

    return Expected(FakeEngine(EngineConfig(engine='fake', **fields)))


_WORDS = ('the quick brown fox jumps over lazy dog river bank hello world how old are you '
          'what is your age café naïve résumé first do it then right better').split()


def sentence(i: int) -> str:
    """A deterministic input for index i: the number, then 1 to 12 words; distinct for distinct i."""
    n = 1 + (i * 7) % 12
    return ' '.join([str(i)] + [_WORDS[(i * 3 + k * 5) % len(_WORDS)] for k in range(n)])


def assert_port_free(port: int) -> None:
    """Binds the port on all interfaces, as the server did; fails if anything still listens there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers hold nothing
        try:
            s.bind(('0.0.0.0', port))
        except OSError as e:
            pytest.fail(f'port {port} is still in use after the server stopped: {e}')


class RawPeer:
    """Speaks the wire protocol in raw frames, to send what no client library would.

    Sockets: PUSH connects to the server's ``port``; SUB connects to ``port_out``, subscribed to
    ``identity``, so it receives the replies meant for that identity.
    """

    def __init__(self, running: RunningServer, identity: bytes):
        self.identity = identity
        self.ctx = zmq.Context()
        self.push = self.ctx.socket(zmq.PUSH)
        self.sub = self.ctx.socket(zmq.SUB)
        for sock in (self.push, self.sub):
            sock.setsockopt(zmq.LINGER, 0)
        self.push.setsockopt(zmq.SNDTIMEO, 5000)
        self.sub.setsockopt(zmq.SUBSCRIBE, identity)
        self.sub.connect(f'tcp://127.0.0.1:{running.port_out}')
        self.push.connect(f'tcp://127.0.0.1:{running.port}')

    def send(self, frames: Sequence[bytes]) -> None:
        self.push.send_multipart(list(frames))

    def recv(self, timeout_ms: int = REPLY_MS) -> Optional[List[bytes]]:
        """The next reply to this identity, or None if none came within ``timeout_ms``."""
        if not self.sub.poll(timeout_ms, zmq.POLLIN):
            return None
        return self.sub.recv_multipart()

    def close(self) -> None:
        self.ctx.destroy(linger=0)


def wait_until(predicate: Callable[[], bool], seconds: float, interval: float = 0.2) -> bool:
    """Polls ``predicate`` until it holds or ``seconds`` pass; returns whether it held."""
    deadline = time.monotonic() + seconds
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def _stat(pid: int) -> Optional[List[str]]:
    """Fields of /proc/pid/stat after the command name: [state, ppid, ...]; None if gone."""
    try:
        text = Path(f'/proc/{pid}/stat').read_text()
    except OSError:
        return None
    return text[text.rindex(')') + 2:].split()


def children_of(pid: int) -> Set[int]:
    """Pids of every live descendant of ``pid``."""
    parents = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None and fields[0] not in ('Z', 'X'):
                parents[int(entry)] = int(fields[1])
    found, frontier = set(), [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found.add(child)
                frontier.append(child)
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ('Z', 'X')


@contextlib.contextmanager
def paused(*pids: int):
    """Freezes processes with SIGSTOP; SIGCONT on leaving (to those still there), so that nothing
    stays frozen when a test fails."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


def kill_tree(proc) -> None:
    """SIGKILL to a subprocess.Popen and all its descendants, if it still runs; then reaps it."""
    if proc.poll() is None:
        for pid in children_of(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.kill()
    proc.wait(timeout=30)
