"""Scheduler: the ventilator's state, with no sockets. It is the RequestQueue (request_queue.py:
admission, pieces, priority, turns) plus the ledger of the workers that take its pieces: their credit,
heartbeats and marks, the batches each holds, deliveries the sink has not confirmed, overdue and lost
workers and their pieces queued again; ``take_batches`` joins the two. The ventilator feeds it events
and sends what it returns; tests drive it directly.

A piece stays in flight until the sink confirms it, not until the worker says DONE: a worker that
dies after DONE but before its rows reached the sink leaves unconfirmed pieces, which are queued
again. A piece whose worker is lost twice fails its request. The sink drops rows it already has, so
a piece computed twice is answered once.

Nothing sent is lost to a dropped connection (a cut link: ZeroMQ drops what its pipe held):
    - A worker's heartbeat names every batch it holds, and echoes the mark of the last PONG it got,
      the last batch id sent to it before that PONG. A batch up to the mark that the heartbeat does
      not name was lost on its way, or done with its DONE lost: the worker gets its credit back.
    - A batch a remote worker is done with, by DONE or by that rule, whose pieces the sink has not
      confirmed within the delivery window after its results left the worker (the heartbeat names
      the batches whose results are still leaving: large ones over a slow link take a while), has
      those pieces queued again at the front. A local worker's results cross no connection that
      drops: they get -batch_timeout. Neither counts as a loss against the pieces.
The delivery window is DELIVERY_GRACE_SECONDS plus twice the time the worker's deliveries took
lately. A worker is declared lost when results it said were sent have not reached the sink for
-batch_timeout: one delivery, or every one since a delivery had to be sent again.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

from .messages import HEARTBEAT_SECONDS, Piece
from .request_queue import RequestQueue, SchedulerConfig

__all__ = ['Scheduler', 'Failure', 'Batch']

# A worker whose send failed is skipped this long, so a transient error does not spin the loop.
SEND_BACKOFF_SECONDS = 0.5
MAX_ATTEMPTS = 2  # a piece whose worker is lost this many times fails its request
# The sink confirms results within milliseconds of their arrival; a batch done this long (plus twice
# the worker's recent delivery time) without its confirmation has its pieces sent again.
DELIVERY_GRACE_SECONDS = 3 * HEARTBEAT_SECONDS
DELIVERY_DECAY = 0.9  # each delivery keeps this share of the slowest recent one in the estimate
# Clients answered together come back together. A worker that just finished a batch of several
# requests waits for as many new requests as that batch held, up to this share of the time the
# batch took and at most COHORT_WAIT_MAX_SECONDS, before it takes a batch smaller than a full one:
# otherwise 32 one-sentence clients split into two halves that take turns (while the worker
# computes one half, the other half's requests queue; they go the moment it is free). With the wait
# their batches held ~31 rows instead of ~16.8, and they got 0.78-0.79 of one call's throughput
# instead of 0.76 (float32, bundled model, 2 vCPUs): since the wide tower skips padding, a batch of
# 16 computes a sentence only ~7% more slowly than one of 32, so the wait gains little, and costs
# one sentence alone nothing.
COHORT_WAIT_SHARE = 0.25
COHORT_WAIT_MAX_SECONDS = 0.010


class Failure(NamedTuple):
    """A request to fail: the ventilator tells the sink."""
    client: bytes
    req_id: int
    serial: int
    message: str


class Batch(NamedTuple):
    """A batch to send: the worker's identity, the batch id, its pieces."""
    worker: bytes
    batch_id: int
    pieces: List[Piece]


@dataclass
class _Delivery:
    """A batch its worker is done with, some of whose pieces the sink had not confirmed then."""
    pieces: List[int]
    since: float  # when the ventilator learnt that the worker was done with it
    left: Optional[float]  # since when its results have left the worker (None: still leaving)
    resent: bool = False  # its unconfirmed pieces were queued again


@dataclass
class _Worker:
    """A ready worker. ``batches`` are sent and not DONE: id -> (piece ids, deadline); ``delivered``
    are done, with pieces the sink had not confirmed: id -> _Delivery."""
    label: str
    name: str
    credit: int
    last_seen: float
    remote: bool = False
    batches: Dict[int, Tuple[List[int], float]] = field(default_factory=dict)
    delivered: Dict[int, _Delivery] = field(default_factory=dict)
    pieces: Set[int] = field(default_factory=set)  # dispatched, unconfirmed
    computing: Optional[int] = None  # the batch its last heartbeat named
    skip_until: float = 0.0
    last_sent: int = 0  # the last batch id sent to it: the mark of the next PONG
    delivery_seconds: float = 0.0  # how long its results took to be confirmed lately (decaying maximum)
    undelivered_since: Optional[float] = None  # a delivery had to be sent again, and none arrived whole since
    sent: Dict[int, Tuple[float, int]] = field(default_factory=dict)  # batch id -> (when sent, requests in it)
    free_since: float = 0.0  # when it last finished a batch
    cohort: int = 0  # the requests of the batch it finished last: as many may come back soon
    cohort_mark: int = 0  # the last serial accepted when it finished that batch
    cohort_until: float = 0.0  # how long a smaller batch waits for them


class Scheduler(RequestQueue):
    """Owned by the ventilator; not thread-safe.

    Args:
        config: limits and timeouts.
        clock: monotonic seconds (tests pass their own).
        lengths: ``lengths(texts, is_tokenized)``, the length of each input, by which a request split
            into pieces is sorted first; the server passes the model's word-piece counts
            (engine.features.token_counts). The default, characters (a token counts 6), cut the
            bench request into 148 model calls and 4.6% of padding instead of 56 and 3.7%.
    """

    def __init__(self, config: SchedulerConfig, clock: Callable[[], float] = time.monotonic,
                 lengths: Optional[Callable[[list, bool], Sequence[int]]] = None):
        super().__init__(config, lengths, clock)
        self.workers: Dict[bytes, _Worker] = {}
        self._batch_ids = itertools.count(1)
        self.batches_per_worker: Dict[str, int] = {}
        self.sequences_per_worker: Dict[str, int] = {}

    def _num_workers(self) -> int:
        return max(super()._num_workers(), len(self.workers))  # remote workers count too

    def _forget_piece(self, piece_id: int) -> None:
        """Forgets the piece, and takes it off the list of the worker that holds it."""
        worker = self.workers.get(self.holder.get(piece_id))
        super()._forget_piece(piece_id)
        if worker is not None:
            worker.pieces.discard(piece_id)

    # -- workers ---------------------------------------------------------------------------------
    def add_worker(self, identity: bytes, credit: int, label: str, name: Optional[str] = None,
                   remote: bool = False) -> List[Failure]:
        """A worker said READY with ``credit`` batches of room. Only a ``remote`` worker's results
        cross a connection that can drop (tcp -port_worker_sink), so only they are sent again after
        the delivery window; a local worker's wait -batch_timeout (a sink slow to confirm them
        must not be given more work).

        Returns:
            requests to fail, if this identity was a worker already (its old pieces are lost).
        """
        failures = self.remove_worker(identity, 'registered again') if identity in self.workers else []
        self.workers[identity] = _Worker(label, name or label, max(1, credit), self.clock(), remote=remote)
        return failures

    def mark(self, identity: bytes) -> Optional[int]:
        """What the PONG to this worker's heartbeat carries: the last batch id sent to it (None for a
        worker that is not ready)."""
        worker = self.workers.get(identity)
        return None if worker is None else worker.last_sent

    def seen(self, identity: bytes, computing: Optional[int] = None, holds: Optional[Sequence[int]] = None,
             pong: Optional[int] = None, sending: Sequence[int] = ()) -> bool:
        """Any message of a worker proves it alive. A heartbeat also names the batch it computes,
        whose deadline starts then (not when it was sent: a prefetched batch waits its turn), every
        batch it holds, the batches whose results are still leaving it, and ``pong``, the mark of
        the last PONG it got. A batch sent before that PONG (so before it on the same connection)
        that the worker does not hold is done with, as if by DONE: it never arrived (a dropped
        connection lost it), or its DONE was lost.

        Returns:
            False for an unknown worker.
        """
        worker = self.workers.get(identity)
        if worker is None:
            return False
        now = worker.last_seen = self.clock()
        if computing is not None and computing != worker.computing and computing in worker.batches:
            worker.batches[computing] = (worker.batches[computing][0], now + self.cfg.batch_timeout)
        worker.computing = computing
        if holds is not None and pong is not None:
            held = set(holds)
            for batch_id in [b for b in worker.batches if b <= pong and b not in held]:
                self._done(identity, worker, batch_id)
        if holds is not None:
            leaving = set(sending)
            for batch_id, delivery in worker.delivered.items():
                if batch_id in leaving:
                    delivery.left = None
                elif delivery.left is None:
                    delivery.left = now
        return True

    def done(self, identity: bytes, batch_id: int) -> None:
        """The worker pushed a batch's results to the sink; it has room for one more. Pieces the sink
        has not confirmed are sent again after the delivery window (see _check_deliveries)."""
        worker = self.workers.get(identity)
        if worker is not None and batch_id in worker.batches:
            self._done(identity, worker, batch_id)

    def _done(self, identity: bytes, worker: _Worker, batch_id: int) -> None:
        piece_ids, _ = worker.batches.pop(batch_id)
        worker.credit += 1
        now = self.clock()
        sent, requests = worker.sent.pop(batch_id, (now, 0))
        took = now - max(sent, worker.free_since)  # a prefetched batch waited for the one before it
        worker.free_since = now
        worker.cohort, worker.cohort_mark = requests, self.last_serial
        worker.cohort_until = now + min(COHORT_WAIT_SHARE * max(0.0, took), COHORT_WAIT_MAX_SECONDS)
        waiting = [p for p in piece_ids if self.holder.get(p) == identity]
        if waiting:
            worker.delivered[batch_id] = _Delivery(waiting, now, left=now)  # a heartbeat may say otherwise

    def remove_worker(self, identity: bytes, reason: str) -> List[Failure]:
        """The worker is gone (dead, silent or hung). Its unconfirmed pieces are queued again at
        the front. Only the batch it was computing counts as a loss against its pieces (a worker
        computes its batches in the order it got them, so that is the oldest one not DONE); the
        batches prefetched behind it, and results computed but not yet confirmed, do not. A piece
        lost twice fails its request.

        Returns:
            the requests to fail.
        """
        worker = self.workers.pop(identity, None)
        if worker is None:
            return []
        computing = set()
        if worker.computing in worker.batches:
            computing = set(worker.batches[worker.computing][0])
        elif worker.computing is None and worker.batches:  # no heartbeat named one yet: the oldest
            computing = set(worker.batches[min(worker.batches)][0])
        failures: List[Failure] = []
        for piece_id in sorted(worker.pieces, reverse=True):
            self.holder.pop(piece_id, None)
            piece = self.pieces.get(piece_id)
            if piece is None:
                continue
            if piece_id in computing:
                piece.attempt += 1
            request = self.requests.get(piece.serial)
            if request is None or request.failed:
                continue
            if piece.attempt >= MAX_ATTEMPTS:
                request.failed = True
                self.queued.difference_update(request.pieces)  # never dispatched now
                failures.append(Failure(piece.client, piece.req_id, piece.serial,
                                        f'workers were lost twice while encoding this request (last: '
                                        f'{worker.name} {reason}); check the server log'))
            else:
                self._requeue(piece_id)
        return failures

    def send_failed(self, batch: Batch) -> None:
        """A batch could not be sent: its pieces go back to the front and the worker keeps its
        credit; it is skipped briefly, not sidelined."""
        worker = self.workers.get(batch.worker)
        if worker is not None:
            worker.batches.pop(batch.batch_id, None)
            worker.sent.pop(batch.batch_id, None)
            worker.credit += 1
            worker.skip_until = self.clock() + SEND_BACKOFF_SECONDS
        for piece in reversed(batch.pieces):
            self.holder.pop(piece.piece_id, None)
            if worker is not None:
                worker.pieces.discard(piece.piece_id)
            self._requeue(piece.piece_id)

    def overdue(self) -> List[Tuple[bytes, str]]:
        """Runs the deadlines (the ventilator calls it a few times a second): queues again the
        pieces of deliveries past their window, and returns the ready workers that went silent,
        hold a batch past its deadline, or whose results have not reached the sink for
        -batch_timeout, with the reason."""
        now = self.clock()
        found = []
        for identity, w in self.workers.items():
            self._check_deliveries(identity, w, now)
            if now - w.last_seen > self.cfg.heartbeat_timeout:
                found.append((identity, f'was silent for {now - w.last_seen:.0f}s '
                                        f'(-heartbeat_timeout {self.cfg.heartbeat_timeout:g}s)'))
            elif any(deadline < now for _, deadline in w.batches.values()):
                found.append((identity, f'held a batch for more than -batch_timeout '
                                        f'{self.cfg.batch_timeout:g}s'))
            elif (any(not d.resent and now - d.since > self.cfg.batch_timeout for d in w.delivered.values())
                  or (w.undelivered_since is not None and now - w.undelivered_since > self.cfg.batch_timeout
                      and any(d.resent for d in w.delivered.values()))):
                since = min([d.since for d in w.delivered.values()] + [w.undelivered_since or now])
                found.append((identity, f'said its results were sent, but the sink did not get them for '
                                        f'{now - since:.0f}s (-batch_timeout '
                                        f'{self.cfg.batch_timeout:g}s; can the worker reach -port_worker_sink?)'))
        return found

    def _check_deliveries(self, identity: bytes, worker: _Worker, now: float) -> None:
        """Forgets deliveries the sink has confirmed whole, learning how long they took; queues again
        the unconfirmed pieces of those past the window (their results were lost, or are late: the
        sink answers a piece once, whichever copy comes first)."""
        window = self.cfg.batch_timeout
        if worker.remote:
            window = min(DELIVERY_GRACE_SECONDS + 2 * worker.delivery_seconds, window)
        for batch_id, delivery in list(worker.delivered.items()):
            waiting = [p for p in delivery.pieces if p in self.pieces]
            if not waiting:
                del worker.delivered[batch_id]
                if not delivery.resent:  # else the copy may have come first: it tells nothing
                    took = now - (delivery.since if delivery.left is None else delivery.left)
                    worker.delivery_seconds = max(took, DELIVERY_DECAY * worker.delivery_seconds)
                    worker.undelivered_since = None
            elif not delivery.resent and delivery.left is not None and now - delivery.left > window:
                delivery.resent = True
                if worker.undelivered_since is None:
                    worker.undelivered_since = delivery.since
                for piece_id in reversed(waiting):
                    if self.holder.get(piece_id) == identity:
                        del self.holder[piece_id]
                        worker.pieces.discard(piece_id)
                        self._requeue(piece_id)

    # -- batching --------------------------------------------------------------------------------
    def _awaits_cohort(self, worker: _Worker, now: float) -> bool:
        """True while a free worker waits for the requests of the batch it finished last to come
        back (see COHORT_WAIT_SHARE): that batch held several, and fewer have arrived since."""
        return (worker.cohort > 1 and now < worker.cohort_until
                and self.last_serial - worker.cohort_mark < worker.cohort)

    def wake_at(self) -> Optional[float]:
        """The clock at which a worker's cohort wait ends with pieces queued (the ventilator
        polls until then at most), else None."""
        if not self.queued:
            return None
        now = self.clock()
        ends = [w.cohort_until for w in self.workers.values()
                if w.credit > 0 and not w.batches and self._awaits_cohort(w, now)]
        return min(ends, default=None)

    def take_batches(self) -> List[Batch]:
        """Batches for every worker with credit, least busy first, while pieces are queued.

        A worker that holds a batch already gets one more (a prefetch) only if the queue fills a
        whole batch (max_batch_size rows). Otherwise the pieces wait for its DONE and then go in
        one larger batch: 32 one-sentence clients were served in 355 batches with prefetching and
        in 240 without, and 15-20% faster (fewer, larger TensorFlow calls). Nor does a free worker
        take less than a whole batch while it waits for its last batch's clients (_awaits_cohort).
        """
        batches: List[Batch] = []
        now = self.clock()
        while self.priority or self.normal:
            full = self._fills_a_batch()
            ready = [(identity, w) for identity, w in self.workers.items()
                     if w.credit > 0 and w.skip_until <= now
                     and (full or (not w.batches and not self._awaits_cohort(w, now)))]
            if not ready:
                break
            identity, worker = max(ready, key=lambda item: item[1].credit)
            pieces = self._take()
            if not pieces:
                break
            batch_id = worker.last_sent = next(self._batch_ids)
            worker.credit -= 1
            # Behind the batches it holds already: its deadline starts when a heartbeat names it.
            waits = 1 + len(worker.batches)
            worker.batches[batch_id] = ([p.piece_id for p in pieces], now + waits * self.cfg.batch_timeout)
            worker.sent[batch_id] = (now, len({p.serial for p in pieces}))
            for p in pieces:
                worker.pieces.add(p.piece_id)
                self.holder[p.piece_id] = identity
                p.queued = now - self.requests[p.serial].accepted
            self.batches_per_worker[worker.label] = self.batches_per_worker.get(worker.label, 0) + 1
            self.sequences_per_worker[worker.label] = (self.sequences_per_worker.get(worker.label, 0)
                                                       + sum(len(p.rows) for p in pieces))
            batches.append(Batch(identity, batch_id, pieces))
        return batches

    # -- status ----------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """Counters for SHOW_STATUS; O(workers), never O(history)."""
        return {
            'num_ready_worker': len(self.workers),
            'num_queued_piece': len(self.queued),
            'num_inflight_piece': len(self.holder),
            'num_open_request': len(self.requests),
            'num_open_rows': self.open_rows,
            'num_open_bytes': self.open_bytes,
            'max_queue_rows': self.cfg.max_queue_rows,
            'accepting': self.accepting,
            'batches_per_worker': dict(sorted(self.batches_per_worker.items())),
            'sequences_per_worker': dict(sorted(self.sequences_per_worker.items())),
        }
