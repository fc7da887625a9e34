"""ConcurrentBertClient: a fixed pool of BertClient that many threads can share.

Each call borrows one idle client, uses it from the calling thread only, and always gives it back,
so no ZeroMQ socket is ever used by two threads at once. Every client of the pool connects like a
BertClient (PUSH to ``port``, SUB to ``port_out``) under its own identity.
"""
from __future__ import annotations

import contextlib
import queue
import threading
from typing import Iterator, List

from .client import BertClient
from .errors import BertServingError, ConfigError

__all__ = ['ConcurrentBertClient']

# How often a caller waiting for an idle client checks whether the pool was closed meanwhile.
_WAIT_POLL_S = 0.1

_NO_ASYNC = ('{} is not available on ConcurrentBertClient: each call borrows a client from the pool and '
             'returns it, so a result cannot be collected later; use one BertClient per thread for '
             'encode(blocking=False), fetch(), fetch_all() and encode_async()')


class ConcurrentBertClient(BertClient):
    """A thread-safe pool of ``max_concurrency`` BertClient.

    It is a BertClient (``isinstance`` holds, as in 1.10), but it holds no socket of its own: every
    public method is overridden to run on a client borrowed from the pool.

    A call borrows an idle client and returns it when done, even if the call raised. When every
    client is busy, the caller waits for one to come back. Only blocking calls make sense across a
    pool, so ``encode_async``, ``fetch`` and ``fetch_all`` raise NotImplementedError.

    Args:
        max_concurrency: Number of clients, i.e. of requests in flight at once.
        **kwargs: Passed to every BertClient (``ip``, ``port``, ``timeout``, ``server_key``,
            ``client_key``, ...). A given ``identity`` gets a suffix per client, since clients
            must not share one.

    Raises:
        ConfigError: ``max_concurrency`` is not a positive int (a ValueError).
        BertTimeoutError, BertServingError: As BertClient's constructor; no client is left open.
    """

    def __init__(self, max_concurrency=10, **kwargs):
        if not isinstance(max_concurrency, int) or isinstance(max_concurrency, bool) or max_concurrency < 1:
            raise ConfigError(f'max_concurrency must be a positive int, got {max_concurrency!r}')
        # No super().__init__(): the pool's clients connect; this object only lends them out.
        self.max_concurrency = max_concurrency
        self._idle: queue.Queue = queue.Queue(maxsize=max_concurrency)
        self._lock = threading.Lock()  # orders close() against give-backs
        self._closed = False
        clients: List[BertClient] = []
        identity = kwargs.pop('identity', None)
        if isinstance(identity, bytes):
            identity = identity.decode('ascii')
        try:
            for i in range(max_concurrency):
                # Equal-length suffixes: no identity is a prefix of another (SUB matches prefixes).
                own = None if identity is None else f'{identity}-{i:06d}'
                clients.append(BertClient(identity=own, **kwargs))
                kwargs['show_server_config'] = False  # print it once, not once per client
        except BaseException:
            for client in clients:
                client.close()
            raise
        for client in clients:
            self._idle.put_nowait(client)

    def encode(self, texts, blocking=True, is_tokenized=False, show_tokens=False):
        """Encodes a batch with an idle client; see :meth:`BertClient.encode`.

        Raises:
            NotImplementedError: ``blocking=False``.
            BertServingError: The pool was closed, also while waiting for an idle client.
        """
        if not blocking:
            raise NotImplementedError(_NO_ASYNC.format('encode(blocking=False)'))
        with self._borrow() as client:
            return client.encode(texts, blocking=True, is_tokenized=is_tokenized, show_tokens=show_tokens)

    @property
    def server_config(self) -> dict:
        """The server's configuration (dict)."""
        with self._borrow() as client:
            return client.server_config

    @property
    def server_status(self) -> dict:
        """The server's runtime statistics (dict)."""
        with self._borrow() as client:
            return client.server_status

    @property
    def status(self) -> dict:
        """The client-side status of one client of the pool (see :attr:`BertClient.status`)."""
        with self._borrow() as client:
            return client.status

    def encode_async(self, *args, **kwargs):
        raise NotImplementedError(_NO_ASYNC.format('encode_async()'))

    def fetch(self, *args, **kwargs):
        raise NotImplementedError(_NO_ASYNC.format('fetch()'))

    def fetch_all(self, *args, **kwargs):
        raise NotImplementedError(_NO_ASYNC.format('fetch_all()'))

    def close(self):
        """Closes every idle client now and every busy one when its call ends; waiting callers
        raise BertServingError. Safe to call more than once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            idle = []
            while True:  # a caller may take the last one between a check and a get: no empty() here
                try:
                    idle.append(self._idle.get_nowait())
                except queue.Empty:
                    break
        for client in idle:
            client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    @contextlib.contextmanager
    def _borrow(self) -> Iterator[BertClient]:
        client = self._take_idle()
        try:
            yield client
        finally:
            with self._lock:
                if not self._closed:
                    self._idle.put_nowait(client)
                    client = None
            if client is not None:
                client.close()

    def _take_idle(self) -> BertClient:
        while True:
            if self._closed:
                raise BertServingError('this ConcurrentBertClient is closed; create a new one')
            try:
                return self._idle.get(timeout=_WAIT_POLL_S)
            except queue.Empty:
                continue
