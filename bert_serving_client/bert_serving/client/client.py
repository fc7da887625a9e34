"""BertClient: sends sentences to a bert-serving server and receives their encodings.

Connects, never binds (``protocol.py`` describes the frames)::

    PUSH -> tcp://ip:port       requests, to the server's ventilator (PULL)
    SUB  <- tcp://ip:port_out   replies, from the server's sink; topic = this client's identity
"""
from __future__ import annotations

import json
import logging
import math
import time
import uuid
import warnings
from itertools import islice
from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Optional, Set, Union

import numpy as np
import zmq

from ._version import PROTOCOL_VERSION, __version__
from .connection import ConnectionWatch, enable_heartbeats
from .errors import BertServerError, BertServerGoneError, BertServingError, BertTimeoutError, ConfigError, ProtocolError
from .protocol import MAX_IDENTITY_BYTES, Command, Reply, is_reply_for, pack_request, reply_error, unpack_reply
from .security import CurveKeys, secure_client_socket
from .validation import validate_texts

__all__ = ['BertClient', 'Response', 'HANDSHAKE_TIMEOUT_MS', 'HANDSHAKE_RESEND_MS', 'WAIT_LOG_INTERVAL_S',
           'ASYNC_MAX_IN_FLIGHT']

logger = logging.getLogger('bert_serving.client')

# With a finite ``timeout``, the first SHOW_CONFIG gives up after this long (or after ``timeout`` if
# smaller), so a constructor pointed at an absent server fails with advice. With timeout=-1 it
# waits, as 1.10 did, for a server that is not up yet (containers and units start in any order).
HANDSHAKE_TIMEOUT_MS = 10000
# A SUB socket drops whatever the server publishes before its subscription arrives (the ZeroMQ
# "slow joiner"); an old server would then never answer the first SHOW_CONFIG, so we ask again.
HANDSHAKE_RESEND_MS = 1000
# A handshake that waits for a server logs a warning this often, naming the address it waits on.
WAIT_LOG_INTERVAL_S = 10.0
# encode_async keeps at most this many batches at the server, so a fast generator cannot flood it.
ASYNC_MAX_IN_FLIGHT = 16


class Response(NamedTuple):
    """The result of one request, as yielded by ``fetch()`` and ``encode_async()``.

    Attributes:
        id: Request id; ids increase in sending order, so sorting on them restores it.
        embedding: Read-only float32 (float16 from a ``-fp16`` server) array [B, D] ([B, T, D] with pooling NONE), or a list.
        tokens: B token lists if the server sent them (``-show_tokens_to_client`` or
            ``show_tokens=True``), else ``''`` as in 1.10.
    """
    id: int
    embedding: Any
    tokens: Union[List[List[str]], str]


class BertClient:
    """A connection to one bert-serving server.

    Not thread-safe: ZeroMQ sockets must not be shared between threads. Use one BertClient per
    thread, or a :class:`~bert_serving.client.ConcurrentBertClient`.

    Args:
        ip, port, port_out: The server's address, request port (``-port``) and result port (``-port_out``).
        output_fmt: 'ndarray' for numpy arrays, 'list' for nested Python lists.
        show_server_config: Print the server's config after connecting.
        identity: Topic of this client's replies (str or bytes, unique per client); a UUID by default.
        check_version: Refuse a server whose wire protocol version differs from ours.
        check_length: Warn when an input has more words than the server's ``max_seq_len``.
        check_token_info: Ask whether the server can return tokens (needed by ``show_tokens``).
        ignore_all_checks: Skip the three checks above and the handshake they need.
        timeout: Milliseconds to wait for each reply; -1 waits forever. With -1 the handshake in
            the constructor waits for a server that is not up yet, logging a warning every
            ``WAIT_LOG_INTERVAL_S``; otherwise it gives up after ``HANDSHAKE_TIMEOUT_MS`` (or
            ``timeout`` if smaller), raising BertTimeoutError. Whatever ``timeout`` says, requests
            fail with BertServerGoneError once a dropped connection stays down for
            ``connection.GONE_AFTER_S``; a server back within it (same ports) loses nothing.
        server_key: Path of the server's public ``server.key``, for a server started with
            ``-auth_dir`` (CurveZMQ: encrypted, and only clients whose key the server holds get in).
            Default: ``$BERT_SERVING_SERVER_KEY``; neither connects in plain text, as 1.10.
        client_key: Path of this client's ``NAME.key_secret`` (``bert-serving-keygen`` writes it; its
            ``NAME.key`` goes into the server's ``authorized/``). Default: ``$BERT_SERVING_CLIENT_KEY``.

    Raises:
        ConfigError: ``output_fmt`` is neither 'ndarray' nor 'list', or ``identity`` is empty, longer
            than 256 bytes or holds NUL (a ValueError).
        KeyFileError: Only one of server_key / client_key is set, or a key file is missing,
            unreadable or of the wrong kind (the message says which file to give).
    """

    def __init__(self, ip='localhost', port=5555, port_out=5556, output_fmt='ndarray', show_server_config=False,
                 identity=None, check_version=True, check_length=True, check_token_info=True,
                 ignore_all_checks=False, timeout=-1, server_key=None, client_key=None):
        if output_fmt not in ('ndarray', 'list'):
            raise ConfigError(f'output_fmt must be "ndarray" or "list", got {output_fmt!r}')
        if isinstance(identity, str):
            identity = identity.encode('ascii')
        self.identity = identity or str(uuid.uuid4()).encode('ascii')
        if len(self.identity) > MAX_IDENTITY_BYTES or b'\x00' in self.identity:
            raise ConfigError(f'identity must be 1-{MAX_IDENTITY_BYTES} bytes without NUL (the server answers no '
                              f'other); got {len(self.identity)} bytes. Leave it out for a fresh UUID')
        self.ip, self.port, self.port_out = ip, port, port_out
        self.output_fmt, self.timeout = output_fmt, timeout
        self._curve = CurveKeys.from_files(server_key, client_key)  # before any socket: a bad key opens none
        self.request_id = 0
        self.length_limit = 0  # 0: no length check; None: the server sets no limit
        self.token_info_available = False
        self._pending: Dict[int, bool] = {}  # req_id -> whether tokens were asked for
        self._sent: Dict[int, list] = {}  # req_id -> its frames, sent again to a server that restarted
        self._buffered: Dict[int, Reply] = {}  # replies that came while waiting for another
        self._closed = False
        self._context = zmq.Context()
        try:
            self._sender = self._context.socket(zmq.PUSH)
            self._sender.linger = 0
            self._sender.sndtimeo = max(int(timeout), -1)  # a PUSH with no peer blocks once its queue is full
            secure_client_socket(self._sender, self._curve)
            self._receiver = self._context.socket(zmq.SUB)
            self._receiver.linger = 0
            self._receiver.subscribe(self.identity)
            secure_client_socket(self._receiver, self._curve)
            for sock in (self._sender, self._receiver):
                enable_heartbeats(sock)
            self._watch = ConnectionWatch({'requests': self._sender, 'results': self._receiver})
            self._poller = zmq.Poller()
            for sock in (self._receiver, *self._watch.monitors):
                self._poller.register(sock, zmq.POLLIN)
            self._sender.connect(f'tcp://{ip}:{port}')
            self._receiver.connect(f'tcp://{ip}:{port_out}')
            if not ignore_all_checks and (check_version or show_server_config or check_length or check_token_info):
                self._apply_config(self._handshake(), show_server_config, check_version, check_length,
                                   check_token_info)
        except BaseException:
            self.close()
            raise

    def _apply_config(self, config, show, check_version, check_length, check_token_info):
        if show:
            width = max(map(len, config), default=0)
            print('server config:', *(f'{key:>{width}} = {config[key]}' for key in sorted(config)), sep='\n')
        if check_version:
            # An original 1.x server sends no protocol_version; it speaks version 1.
            theirs = config.get('protocol_version', 1)
            if theirs != PROTOCOL_VERSION:
                raise BertServingError(
                    f'the server (bert-serving-server {config.get("server_version", "unknown")}) speaks wire '
                    f'protocol {theirs}, this client (bert-serving-client {__version__}) speaks protocol '
                    f'{PROTOCOL_VERSION}; install a client and a server with the same protocol, or pass '
                    'check_version=False to try anyway')
        if check_length:
            limit = config.get('max_seq_len')
            self.length_limit = None if limit is None else int(limit)
        if check_token_info:
            self.token_info_available = bool(config.get('show_tokens_to_client', False))

    def _handshake(self) -> dict:
        budget = min(self.timeout, HANDSHAKE_TIMEOUT_MS) if self.timeout > 0 else HANDSHAKE_TIMEOUT_MS
        started = time.monotonic()
        deadline = None if self.timeout < 0 else started + budget / 1000
        next_log = started + WAIT_LOG_INTERVAL_S
        asked, reply = set(), None
        while reply is None and (deadline is None or time.monotonic() < deadline):
            # Ask once, then again only while connected: asks made while nothing listens would pile
            # up in the PUSH queue for a server that is not up yet.
            if not asked or self._watch.is_up('requests'):
                asked.add(self._send(Command.SHOW_CONFIG, 0))
            until = time.monotonic() + HANDSHAKE_RESEND_MS / 1000
            reply = self._wait_reply(asked, until if deadline is None else min(deadline, until), watch_gone=False)
            if reply is None and deadline is None and time.monotonic() >= next_log:
                logger.warning('waiting for a bert-serving server at %s (requests to "port"=%d, results from '
                               '"port_out"=%d) for %.0f s; start one with `bert-serving-start`, or check ip, port '
                               'and port_out; %s', self.ip, self.port, self.port_out, time.monotonic() - started,
                               self._auth_hint().rstrip())
                next_log += WAIT_LOG_INTERVAL_S
        for req_id in asked:
            self._settle(req_id)  # answers to the other asks are duplicates: drop them
        if reply is None:
            raise BertTimeoutError(
                f'no response from a bert-serving server at {self.ip} within {budget} ms of connecting (requests go '
                f'to "port"={self.port}, results come from "port_out"={self.port_out}), please check the following: '
                'is the server running (start one with `bert-serving-start`)? are "ip", "port" and "port_out" the '
                f'ones the server was started with? is a firewall blocking either port? {self._auth_hint()}'
                '(ignore_all_checks=True connects without this handshake)')
        return self._take(reply, 'json')

    def encode(self, texts, blocking=True, is_tokenized=False, show_tokens=False):
        """Encodes a batch of sentences.

        Args:
            texts: Non-empty list (or tuple) of str; empty and blank strings are kept (encoded as
                ``[CLS] [SEP]``); ``'a ||| b'`` is a pair. With ``is_tokenized``, token lists.
            blocking: False returns None at once; get the result from ``fetch()``/``fetch_all()``.
            is_tokenized: ``texts`` holds token lists that the server must not re-tokenize.
            show_tokens: Also return the server's tokens (needs ``-show_tokens_to_client``; else warns).

        Returns:
            float32 array (float16 from a ``-fp16`` server) [B, D] ([B, T, D] with pooling NONE), row i for ``texts[i]`` (a list with
            ``output_fmt='list'``); ``(array, tokens)`` with ``show_tokens``. The array is a read-only,
            zero-copy view of the received message: ``np.array(result)`` makes a writable copy.

        Raises:
            BadRequest: ``texts`` is malformed (also a TypeError and a ValueError, as 1.10 raised);
                the message names the element.
            BertServerBusyError: The server's queue is full; retry after ``err.retry_after`` seconds.
            BertServerShuttingDownError: The server is stopping and did not serve the request.
            BertServerError: The server failed on this request (``err.code`` says why, if it did).
            BertTimeoutError: No reply within ``timeout``.
        """
        texts, _ = validate_texts(texts, bool(is_tokenized))
        self._check_length(texts, is_tokenized)
        if show_tokens and not self.token_info_available:
            warnings.warn('show_tokens=True, but the server does not send tokens to clients; start it with `bert-'
                          'serving-start -show_tokens_to_client ...`, or call encode(show_tokens=False)', stacklevel=2)
            show_tokens = False
        req_id = self._send(json.dumps(texts).encode(), len(texts), show_tokens)
        if not blocking:
            return None
        result = self._take(self._next_reply({req_id}, give_up=True), 'result')
        return (result.embedding, result.tokens) if show_tokens else result.embedding

    def encode_async(self, batch_generator: Iterable, max_num_batch=None, delay=0.1, **kwargs) -> Iterator[Response]:
        """Encodes batches from a generator, sending ahead (up to ``ASYNC_MAX_IN_FLIGHT`` batches,
        the first before this returns) while receiving. Do not ``fetch()`` while iterating this.

        Args:
            batch_generator: Iterable of ``texts`` batches; ``max_num_batch`` stops after so many.
            delay: Seconds to wait before receiving the first result.
            **kwargs: ``is_tokenized`` and ``show_tokens``, passed to ``encode``.

        Returns:
            A generator of :class:`Response`, in the order the results arrive.
        """
        kwargs.pop('blocking', None)
        batches = iter(batch_generator) if max_num_batch is None else islice(batch_generator, max_num_batch)
        mine: Set[int] = set()

        def send_ahead():
            for texts in islice(batches, max(0, ASYNC_MAX_IN_FLIGHT - len(mine))):
                self.encode(texts, blocking=False, **kwargs)
                mine.add(self.request_id)

        def results():
            time.sleep(delay)
            while True:
                mine.intersection_update(self._pending)  # a fetch() may have taken some
                if not mine:
                    return
                reply = self._next_reply(mine)
                mine.discard(reply.req_id)
                send_ahead()  # keep the server busy while the caller works on this result
                yield self._take(reply, 'result')

        send_ahead()
        return results()

    def fetch(self, delay=0.0) -> Iterator[Response]:
        """After ``delay`` seconds, yields ``Response(id, embedding, tokens)`` for every pending
        request, in the order the results arrive.

        Raises:
            BertServerError: A request failed; it is no longer pending, so ``fetch()`` can go on.
            BertTimeoutError: No reply within ``timeout``; the requests stay pending.
        """
        time.sleep(delay)
        while self._pending:
            yield self._take(self._next_reply(set(self._pending)), 'result')

    def fetch_all(self, sort=True, concat=False):
        """Waits for every pending request and returns their results.

        Args:
            sort: Order the results by request id (sending order); else by arrival.
            concat: Join the results into one array [sum B, D] (or list) along the batch axis.

        Returns:
            None if nothing is pending. Else one entry per request: its array, or ``(array, tokens)``
            if sent with ``show_tokens``. With ``concat``, the joined array, or ``(array, tokens)``
            if any request asked for tokens.

        Raises:
            BertServerError: Once every reply is in, for the first failed request (notes name the others).
            BertTimeoutError: No reply within ``timeout``; unanswered requests stay pending.
        """
        if not self._pending:
            return None
        done, failures = [], []
        while self._pending:
            reply = self._next_reply(set(self._pending))
            wants_tokens = self._pending[reply.req_id]
            try:
                done.append((self._take(reply, 'result'), wants_tokens))
            except BertServerError as err:
                failures.append(err)
        if failures:
            first, *others = sorted(failures, key=lambda e: e.req_id)
            for other in others:
                _add_note(first, f'request {other.req_id} failed too: {other}')
            raise first
        if sort:
            done.sort(key=lambda item: item[0].id)
        if not concat:
            return [(r.embedding, r.tokens) if wants else r.embedding for r, wants in done]
        embeddings = [r.embedding for r, _ in done]
        joined = np.concatenate(embeddings) if self.output_fmt == 'ndarray' else [row for e in embeddings for row in e]
        if any(wants for _, wants in done):
            return joined, [tokens for r, _ in done for tokens in (r.tokens or [])]
        return joined

    @property
    def server_config(self) -> dict:
        """The server's configuration (dict), as the server reports it."""
        return self._command(Command.SHOW_CONFIG)

    @property
    def server_status(self) -> dict:
        """The server's runtime statistics (dict)."""
        return self._command(Command.SHOW_STATUS)

    @property
    def status(self) -> dict:
        """This client's own state; asks the server nothing."""
        return {'identity': self.identity, 'num_request': self.request_id,
                'num_pending_request': len(self._pending), 'pending_request': set(self._pending),
                'output_fmt': self.output_fmt, 'port': self.port, 'port_out': self.port_out,
                'server_ip': self.ip, 'client_version': __version__, 'timeout': self.timeout}

    def close(self):
        """Closes the sockets and the context. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._context.destroy(linger=0)  # closes both sockets, then the context

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # -- plumbing -----------------------------------------------------------------------------

    def _send(self, payload: bytes, msg_len: int, show_tokens=False) -> int:
        if self._closed:
            raise BertServingError('this BertClient is closed; create a new one')
        req_id = self.request_id + 1
        try:
            frames = pack_request(self.identity, payload, req_id, msg_len)
            self._sender.send_multipart(frames)
        except zmq.Again as err:
            raise BertTimeoutError(self._timeout_message()) from err
        self.request_id = req_id
        self._pending[req_id] = show_tokens
        self._sent[req_id] = frames
        return req_id

    def _command(self, command: bytes) -> dict:
        return self._take(self._next_reply({self._send(command, 0)}, give_up=True), 'json')

    def _deadline(self) -> Optional[float]:
        return None if self.timeout < 0 else time.monotonic() + self.timeout / 1000

    def _next_reply(self, wanted: Set[int], give_up=False) -> Reply:
        """Waits ``timeout`` for a reply to one of ``wanted``. On timeout, ``give_up`` stops
        waiting for them for good (a late reply is dropped); else they stay pending."""
        reply = self._wait_reply(wanted, self._deadline())
        if reply is None:
            if give_up:
                for req_id in wanted:
                    self._settle(req_id)
            raise BertTimeoutError(self._timeout_message())
        return reply

    def _wait_reply(self, wanted: Set[int], deadline: Optional[float], watch_gone=True) -> Optional[Reply]:
        """Returns the first reply to a request in ``wanted``, keeping other pending requests'
        replies for later; None once ``deadline`` (a ``time.monotonic()`` value) has passed.

        Raises:
            BertServerGoneError: ``watch_gone`` and a connection to the server has been down for
                ``gone_after`` seconds; the ``wanted`` requests are no longer pending.
        """
        ready = wanted & self._buffered.keys()
        if ready:
            return self._buffered.pop(min(ready))
        changed = False  # the poller registers the monitors too: it wakes for their events
        while True:
            if changed:
                self._follow_connection()
            limit, lost = deadline, self._watch.lost_since()
            if watch_gone and lost is not None:
                gone_at = lost + self._watch.gone_after
                if time.monotonic() >= gone_at:
                    for req_id in wanted:
                        self._settle(req_id)
                    raise BertServerGoneError(self._gone_message())
                limit = gone_at if limit is None else min(limit, gone_at)
            wait_ms = -1 if limit is None else max(0, math.ceil((limit - time.monotonic()) * 1000))
            readable = [sock for sock, _ in self._poller.poll(wait_ms)]
            changed = len(readable) > (self._receiver in readable)
            if self._receiver not in readable:
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue  # a connection changed, or it is time to check for a gone server
            # As bytes, not zmq.Frame: np.frombuffer then makes a read-only, aligned view, no copy.
            frames = self._receiver.recv_multipart()
            if not is_reply_for(self.identity, frames[0]):  # SUB matches topics by prefix
                continue
            reply = unpack_reply(frames)
            if reply.req_id in wanted:
                return reply
            if reply.req_id in self._pending:
                self._buffered[reply.req_id] = reply
            # else: the request timed out or was a duplicate handshake ask: drop the late reply

    def _follow_connection(self):
        """Reads the connection events; when the request connection is back after a drop, sends
        every unanswered request again: a server that restarted never got them (one that only lost
        the link answers twice, and the second answer is dropped as late)."""
        reconnects = self._watch.reconnects
        self._watch.update()
        if self._watch.reconnects == reconnects:
            return
        again = sorted(self._sent.keys() - self._buffered.keys())
        for req_id in again:
            try:
                self._sender.send_multipart(self._sent[req_id], zmq.NOBLOCK)
            except zmq.Again:
                break  # the queue to the server is full; the requests left fail or time out as usual
        if again:
            logger.warning('the connection to the bert-serving server at %s:%d is back; sent %d unanswered '
                           'request(s) again', self.ip, self.port, len(again))

    def _settle(self, req_id: int):
        """Stops waiting for ``req_id``: a reply to it that comes later is dropped."""
        self._pending.pop(req_id, None)
        self._sent.pop(req_id, None)

    def _take(self, reply: Reply, kind: str):
        """Settles the request: a Response for kind 'result', the object for 'json', or the server's error."""
        self._settle(reply.req_id)
        if reply.kind == 'error':
            raise reply_error(reply)
        if reply.kind != kind:
            raise ProtocolError(f'request {reply.req_id} was answered with a {reply.kind} reply, not {kind}')
        if kind == 'json':
            return reply.data
        embedding = reply.array if self.output_fmt == 'ndarray' else reply.array.tolist()
        return Response(reply.req_id, embedding, '' if reply.tokens is None else reply.tokens)

    def _check_length(self, texts, is_tokenized):
        if self.length_limit is None:
            warnings.warn('the server sets no "max_seq_len": it pads each batch to its longest sentence; a fixed '
                          '-max_seq_len on the server usually gives better throughput', stacklevel=3)
        elif self.length_limit:
            longest = max(len(t) if is_tokenized else len(t.split()) for t in texts)
            if longest > self.length_limit:
                warnings.warn(f'some of your sentences have more tokens than "max_seq_len={self.length_limit}" set '
                              'on the server, so they are truncated before encoding; start the server with a larger '
                              '-max_seq_len, or create BertClient(check_length=False) to silence this', stacklevel=3)

    def _auth_hint(self) -> str:
        if self._curve is None:
            return 'if the server runs with -auth_dir, pass server_key= and client_key=. '
        return ('the server lets in only keys it holds: is server_key the server\'s server.key, and is the '
                'public .key of client_key in the server\'s authorized/ folder? ')

    def _gone_message(self) -> str:
        return (f'lost the connection to the bert-serving server at {self.ip} ({" and ".join(self._watch.down())} '
                f'port down: "port"={self.port}, "port_out"={self.port_out}) and it did not come back within '
                f'{self._watch.gone_after:.0f} s; the requests waiting for a reply failed. Is the server still '
                'running (a restart on the same ports within that time loses nothing)? Is the network broken?')

    def _timeout_message(self) -> str:
        return (f'no response from the server (with "timeout"={self.timeout} ms), please check the following: '
                f'is the server at {self.ip} still online? is the network broken? are "port"={self.port} and '
                f'"port_out"={self.port_out} correct? are you encoding a huge amount of data whereas the '
                f'timeout is too small for that? {self._auth_hint().rstrip()}')



def _add_note(err: BaseException, note: str) -> None:
    """``err.add_note(note)`` (Python 3.11+); on 3.9/3.10 the note goes into ``err.__notes__``
    all the same, where 3.11's traceback would look for it, so callers read it the same way."""
    if hasattr(err, 'add_note'):
        err.add_note(note)
    else:
        err.__notes__ = [*getattr(err, '__notes__', ()), note]
