"""RequestQueue: the requests the server has taken and the pieces they are split into, with no
sockets. Admission (refusals by rows, bytes and reply size), splitting, the priority and the normal
queue, the turns of the one request bigger than the queue, and the pieces for the next batch. The
Scheduler (scheduler.py) adds the workers that take those pieces.

The life of a piece:
    queued      accepted, split, waiting in the priority or the normal queue
    dispatched  in a batch held by a worker (its credit taken)
    confirmed   the sink holds its rows (or its failure): forgotten here

A request is open from ``accept`` until the sink says it FINISHED (answered or failed). What counts
against ``max_queue_rows`` and ``max_queue_bytes`` is the part of the open requests not computed yet:
the rows of their unconfirmed pieces, and the same share of their payload bytes. A confirmed piece
frees its room at once, so a big request streams through the queue and others get in behind it as it
goes. A request that does not fit in the room left is refused at once (server busy), except one
bigger than the whole queue (in rows or bytes): it is accepted whenever no other such request is
open, whatever the queue holds, and others wait (busy) until it has streamed down into the bound.
So the queue holds at most its bounds plus one big request, itself bounded by -max_request_bytes
and -max_reply_bytes, and a big request is never refused for good nor starved by small traffic.
"""
from __future__ import annotations

import itertools
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Optional, Sequence, Set, Tuple

from bert_serving.client.errors import BertServingError
from bert_serving.client.protocol import ErrorCode

from ..config import ServerConfig, field_default
from .messages import Piece

__all__ = ['SchedulerConfig', 'RequestQueue', 'Refused']


@dataclass(frozen=True)
class SchedulerConfig:
    """Attributes:
        num_worker: workers the server runs; big requests are split at least this many ways.
        max_batch_size: most rows per batch (and per piece).
        priority_batch_size: requests with at most this many rows use the priority queue.
        max_queue_rows: most rows of accepted requests not computed yet; more is refused as busy,
            except one request bigger than the queue at a time.
        max_queue_bytes: most payload bytes of accepted requests not computed yet (each piece frees
            its share); more is refused as busy, except one request bigger than the queue at a time.
        reply_row_bytes: the most bytes one input may add to a reply (width x 4, times max_seq_len
            for NONE pooling); 0 = not checked.
        max_reply_bytes: the largest reply a request may produce; a request whose worst case is
            larger is refused before anything is computed.
        batch_timeout: seconds a worker may hold a batch before it is declared hung.
        heartbeat_timeout: seconds of silence after which a ready worker is declared lost.
    """
    num_worker: int = field_default(ServerConfig, 'num_worker')
    max_batch_size: int = field_default(ServerConfig, 'max_batch_size')
    priority_batch_size: int = field_default(ServerConfig, 'priority_batch_size')
    max_queue_rows: int = field_default(ServerConfig, 'max_queue_rows')
    max_queue_bytes: int = field_default(ServerConfig, 'max_queue_bytes')
    reply_row_bytes: int = 0
    max_reply_bytes: int = field_default(ServerConfig, 'max_reply_bytes')
    batch_timeout: float = field_default(ServerConfig, 'batch_timeout')
    heartbeat_timeout: float = field_default(ServerConfig, 'heartbeat_timeout')


class Refused(BertServingError):
    """A request the scheduler will not take. ``code`` is a wire error code (busy, shutting_down,
    bad_request); ``retry_after`` is set for busy. The ventilator turns it into an error frame."""

    def __init__(self, message: str, code: str, retry_after: Optional[float] = None):
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after


@dataclass
class _Request:
    client: bytes
    req_id: int
    rows: int
    size: int = 0  # payload bytes
    pieces: Set[int] = field(default_factory=set)  # unconfirmed piece ids
    open_rows: int = 0  # rows of the unconfirmed pieces: what it holds of the queue
    open_bytes: int = 0  # its payload bytes not freed by confirmed pieces
    failed: bool = False
    accepted: float = 0.0  # the clock when it was accepted (its pieces' queue time starts there)


def _character_lengths(texts: list, is_tokenized: bool) -> List[int]:
    """A stand-in for word pieces without a vocabulary: characters, or 6 per pre-split token."""
    return [len(t) * (6 if is_tokenized else 1) if isinstance(t, (str, list, tuple)) else 0 for t in texts]


class RequestQueue:
    """The requests and their pieces; the base of the Scheduler, which owns it. Not thread-safe.

    Args:
        config: limits.
        lengths: ``lengths(texts, is_tokenized)``, the length of each input (see Scheduler).
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, config: SchedulerConfig,
                 lengths: Optional[Callable[[list, bool], Sequence[int]]] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.cfg = config
        self.clock = clock
        self.lengths = lengths or _character_lengths
        self.requests: Dict[int, _Request] = {}
        self.pieces: Dict[int, Piece] = {}
        self.holder: Dict[int, bytes] = {}  # piece id -> worker identity, while dispatched
        # Piece ids wait in the two deques; a piece forgotten while queued is skipped when it comes up
        # (or dropped by _compact), so ``queued`` holds the ids that are really waiting.
        self.priority: Deque[int] = deque()
        self.normal: Deque[int] = deque()
        self.queued: Set[int] = set()
        self.open_rows = 0
        self.open_bytes = 0
        self.oversize: Optional[int] = None  # the serial of the open request bigger than the queue
        self.accepting = True
        self._serials = itertools.count(1)
        self.last_serial = 0  # the serial of the last request accepted: arrivals are counted by it
        self._piece_ids = itertools.count(1)

    def _num_workers(self) -> int:
        """The workers a big request is split among at least: those the server runs."""
        return self.cfg.num_worker

    def accept(self, client: bytes, req_id: int, texts: list, is_tokenized: bool,
               show_tokens: bool = False, size: int = 0) -> int:
        """Splits a request into length-bucketed pieces and queues them.

        Args:
            size: the request's payload bytes (counted against max_queue_bytes).

        Returns:
            the request's serial.

        Raises:
            Refused: shutting down, a reply larger than max_reply_bytes, the room left in the queue
                is too small, or it is bigger than the queue and another such request is open.
        """
        n, cfg = len(texts), self.cfg
        if not self.accepting:
            raise Refused('server shutting down: it takes no new requests', ErrorCode.SHUTTING_DOWN)
        if n * cfg.reply_row_bytes > cfg.max_reply_bytes:
            raise Refused(f'the reply to {n} inputs could take up to {n * cfg.reply_row_bytes} bytes ({cfg.reply_row_bytes} '
                          f'per input), over -max_reply_bytes {cfg.max_reply_bytes}; send at most '
                          f'{cfg.max_reply_bytes // cfg.reply_row_bytes} inputs per request', ErrorCode.BAD_REQUEST)
        oversize = n > cfg.max_queue_rows or size > cfg.max_queue_bytes
        if oversize and self.oversize is not None:
            raise Refused(f'server busy: another request bigger than the queue is in progress (at most one at a '
                          f'time; -max_queue_rows {cfg.max_queue_rows}, -max_queue_bytes {cfg.max_queue_bytes}); '
                          'retry shortly', ErrorCode.BUSY, retry_after=1.0)
        if not oversize and self.open_rows + n > cfg.max_queue_rows:
            raise Refused(f'server busy: {self.open_rows} inputs are queued or in progress and '
                          f'-max_queue_rows is {cfg.max_queue_rows}; retry shortly', ErrorCode.BUSY, retry_after=1.0)
        if not oversize and self.open_bytes + size > cfg.max_queue_bytes:
            raise Refused(f'server busy: {self.open_bytes} bytes of requests are queued or in progress and '
                          f'-max_queue_bytes is {cfg.max_queue_bytes}; retry shortly', ErrorCode.BUSY, retry_after=1.0)
        workers = self._num_workers()
        num_pieces = max(math.ceil(n / self.cfg.max_batch_size), min(workers, n // 32), 1)
        if num_pieces == 1:
            orders = [list(range(n))]
        else:
            # Bucketing: neighbours in length share a piece, so little padding is computed.
            try:
                lengths = self.lengths(texts, is_tokenized)
            except Exception:  # a measure must never lose a request: fall back to characters
                lengths = _character_lengths(texts, is_tokenized)
            by_len = sorted(range(n), key=lengths.__getitem__)
            per_piece = math.ceil(n / num_pieces)
            orders = [by_len[i:i + per_piece] for i in range(0, n, per_piece)]
        serial = self.last_serial = next(self._serials)
        request = self.requests[serial] = _Request(client, req_id, n, size, open_rows=n, open_bytes=size,
                                                   accepted=self.clock())
        if oversize:
            self.oversize = serial
        self.open_rows += n
        self.open_bytes += size
        priority = n <= self.cfg.priority_batch_size
        for rows in orders:
            piece = Piece(client, req_id, rows, [texts[i] for i in rows], is_tokenized,
                          show_tokens=show_tokens, serial=serial, piece_id=next(self._piece_ids))
            self.pieces[piece.piece_id] = piece
            request.pieces.add(piece.piece_id)
            (self.priority if priority else self.normal).append(piece.piece_id)
            self.queued.add(piece.piece_id)
        if not priority:
            self._take_turns()
        return serial

    def _take_turns(self) -> None:
        """Interleaves the one request bigger than the queue (a 250,000-input call is ~1,000 pieces)
        with everything else in the normal queue, one piece each in turn; the others keep their first
        come, first served order. A request queued behind the big one then gets a piece computed
        every other batch instead of waiting for the whole of it (and never goes -request_timeout
        without progress because of it), while ordinary requests still finish one after another
        rather than all late together. O(queued pieces) per request that enters this queue."""
        if self.oversize is None:
            return
        big, others = [], []
        for piece_id in self.normal:
            piece = self.pieces.get(piece_id)
            if piece is None or piece_id not in self.queued:
                continue  # forgotten or dispatched: dropped here as in _compact
            (big if piece.serial == self.oversize else others).append(piece_id)
        order = [piece_id for pair in zip(big, others) for piece_id in pair]
        n = min(len(big), len(others))
        self.normal = deque(order + big[n:] + others[n:])

    def finished(self, serials) -> None:
        """The sink answered or failed these requests: forget them and their pieces."""
        for serial in serials:
            request = self.requests.pop(serial, None)
            if request is None:
                continue
            if serial == self.oversize:
                self.oversize = None
            self.open_rows -= request.open_rows
            self.open_bytes -= request.open_bytes
            for piece_id in request.pieces:
                self._forget_piece(piece_id)
        self._compact()

    def confirm(self, piece_ids) -> None:
        """The sink holds these pieces' rows: their room in the queue is free."""
        for piece_id in piece_ids:
            piece = self.pieces.get(piece_id)
            if piece is not None:
                request = self.requests.get(piece.serial)
                if request is not None and piece_id in request.pieces:
                    request.pieces.discard(piece_id)
                    rows = len(piece.rows)
                    share = request.size * rows // request.rows  # the rest is freed by finished()
                    request.open_rows -= rows
                    request.open_bytes -= share
                    self.open_rows -= rows
                    self.open_bytes -= share
                self._forget_piece(piece_id)
        self._compact()

    def _forget_piece(self, piece_id: int) -> None:
        self.pieces.pop(piece_id, None)
        self.queued.discard(piece_id)
        self.holder.pop(piece_id, None)
        # Its id, if queued, is skipped in _take or dropped by _compact; deliveries that name it see
        # it gone in _check_deliveries.

    def _compact(self) -> None:
        """Drops forgotten ids from the queues once they outnumber the waiting ones: requests that
        end while no worker takes anything (all hung, say) must not grow the queues without bound."""
        if len(self.priority) + len(self.normal) > 2 * len(self.queued) + 64:
            self.priority = deque(i for i in self.priority if i in self.queued)
            self.normal = deque(i for i in self.normal if i in self.queued)

    def stop_intake(self) -> None:
        """Refuse new requests from now on (draining)."""
        self.accepting = False

    def open_requests(self) -> List[Tuple[bytes, int, int]]:
        """(client, req_id, serial) of every request not finished yet."""
        return [(r.client, r.req_id, s) for s, r in self.requests.items()]

    def _requeue(self, piece_id: int) -> None:
        """Puts a piece back at the very front, unless it was confirmed or its request ended meanwhile."""
        piece = self.pieces.get(piece_id)
        request = self.requests.get(piece.serial) if piece is not None else None
        if request is not None and not request.failed:
            self.priority.appendleft(piece_id)
            self.queued.add(piece_id)

    def _fills_a_batch(self) -> bool:
        """True if the queued pieces hold max_batch_size rows or more (counts at most that far)."""
        rows = 0
        for piece_id in self.queued:
            piece = self.pieces.get(piece_id)
            if piece is not None:
                rows += len(piece.rows)
                if rows >= self.cfg.max_batch_size:
                    return True
        return False

    def _take(self) -> List[Piece]:
        """Queued pieces for one batch: priority first, up to max_batch_size rows. A piece on its
        retry (its worker was lost computing it) goes alone, so an input that hangs or crashes
        workers cannot take other requests down with it a second time."""
        pieces: List[Piece] = []
        rows = 0
        for queue in (self.priority, self.normal):
            while queue:
                piece = self.pieces.get(queue[0])
                request = self.requests.get(piece.serial) if piece is not None else None
                if piece is None or request is None or request.failed or piece.piece_id in self.holder:
                    self.queued.discard(queue.popleft())  # confirmed, finished, failed, or dispatched again
                    continue
                if pieces and (piece.attempt or rows + len(piece.rows) > self.cfg.max_batch_size):
                    return pieces
                queue.popleft()
                self.queued.discard(piece.piece_id)
                pieces.append(piece)
                rows += len(piece.rows)
                if piece.attempt:
                    return pieces
        return pieces
