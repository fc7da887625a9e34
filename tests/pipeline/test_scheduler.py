"""Scheduler: splitting, priority, batching, credit, confirmations, re-queue on loss, backpressure and
deadlines, driven directly with a fake clock. No sockets, no processes."""
import math
import random

import pytest

from bert_serving.client.protocol import ErrorCode
from bert_serving.server.pipeline.request_queue import Refused, SchedulerConfig
from bert_serving.server.pipeline.scheduler import MAX_ATTEMPTS, SEND_BACKOFF_SECONDS, Scheduler


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


def make(clock, **fields) -> Scheduler:
    return Scheduler(SchedulerConfig(**fields), clock=clock)


def words(n: int, prefix: str = 's') -> list:
    """n distinct inputs of varied length: input i has (i * 7) % 13 + 1 words."""
    return [' '.join([f'{prefix}{i}'] * ((i * 7) % 13 + 1)) for i in range(n)]


def queued_pieces(s: Scheduler) -> list:
    return [s.pieces[i] for i in list(s.priority) + list(s.normal)]


def dispatched_ids(batches) -> list:
    return [p.piece_id for b in batches for p in b.pieces]


# -- splitting -------------------------------------------------------------------------------------
@pytest.mark.parametrize('n, max_batch_size, num_worker', [
    (1, 256, 1), (16, 4, 1), (17, 4, 1), (100, 256, 1), (100, 256, 3), (64, 256, 8), (63, 256, 8),
    (1000, 256, 2), (1000, 100, 16), (5000, 256, 4), (33, 8, 2),
])
def test_a_request_is_split_into_the_documented_number_of_pieces(clock, n, max_batch_size, num_worker):
    s = make(clock, max_batch_size=max_batch_size, num_worker=num_worker, priority_batch_size=0)
    texts = words(n)
    s.accept(b'c', 1, texts, is_tokenized=False)
    pieces = queued_pieces(s)
    assert len(pieces) == max(math.ceil(n / max_batch_size), min(num_worker, n // 32), 1)
    assert all(0 < len(p.rows) <= max_batch_size for p in pieces)
    rows = sorted(r for p in pieces for r in p.rows)
    assert rows == list(range(n))  # every row exactly once
    for p in pieces:
        assert p.texts == [texts[r] for r in p.rows]
        assert (p.client, p.req_id, p.attempt) == (b'c', 1, 0)


@pytest.mark.parametrize('is_tokenized', [False, True])
def test_pieces_are_length_buckets(clock, is_tokenized):
    s = make(clock, max_batch_size=10, priority_batch_size=0)
    rng = random.Random(3)
    lengths = [rng.randint(1, 60) for _ in range(47)]
    texts = [['w'] * k for k in lengths] if is_tokenized else ['x' * k for k in lengths]
    s.accept(b'c', 1, texts, is_tokenized=is_tokenized)
    pieces = queued_pieces(s)
    assert len(pieces) == 5
    spans = [(min(lengths[r] for r in p.rows), max(lengths[r] for r in p.rows)) for p in pieces]
    for (_, hi), (lo, _) in zip(spans, spans[1:]):
        assert hi <= lo  # no input of a piece is longer than any input of the next
    assert all(p.is_tokenized == is_tokenized for p in pieces)


def test_pieces_are_buckets_of_the_lengths_the_server_measures(clock):
    """The server sorts by word pieces, not characters: 'extraordinarily' is one word of 15
    characters but may be several pieces, 'a b c d' four pieces in 7 characters."""
    pieces_of = {'a b c d e f': 6, 'xxxxxxxxxxxxxxxxxxxxxx': 1, 'a b': 2, 'yyyyyyyyyyyyyyyyyyyyyyyyyy': 1}
    seen = []

    def word_pieces(texts, is_tokenized):
        seen.append(is_tokenized)
        return [pieces_of[t] for t in texts]

    s = Scheduler(SchedulerConfig(max_batch_size=2, priority_batch_size=0), clock=clock, lengths=word_pieces)
    texts = list(pieces_of)
    s.accept(b'c', 1, texts, is_tokenized=False)
    assert [sorted(pieces_of[texts[r]] for r in p.rows) for p in queued_pieces(s)] == [[1, 1], [2, 6]]
    assert seen == [False]


def test_a_measure_that_fails_falls_back_to_characters_and_loses_nothing(clock):
    def broken(texts, is_tokenized):
        raise MemoryError('no room to tokenize')

    s = Scheduler(SchedulerConfig(max_batch_size=2, priority_batch_size=0), clock=clock, lengths=broken)
    texts = ['ccc', 'a', 'dddd', 'bb']
    serial = s.accept(b'c', 1, texts, is_tokenized=False)
    pieces = queued_pieces(s)
    assert [[texts[r] for r in p.rows] for p in pieces] == [['a', 'bb'], ['ccc', 'dddd']]
    assert s.open_rows == 4 and serial in s.requests


def test_counting_word_pieces_is_bounded_per_request():
    """The ventilator counts in its loop: each text on its first characters only, and a request past
    the budget in characters."""
    from bert_serving.server.engine import features
    from bert_serving.server.engine.tokenization import BertTokenizer
    from tiny_model import bundled_vocab_file

    tokenizer = BertTokenizer(str(bundled_vocab_file()), word_cache_size=16)
    long_text = 'word ' * 10_000
    assert features.token_counts(tokenizer, [long_text, 'a b'], False) == [features.COUNT_PREFIX_CHARS // 5, 2]
    many = ['hello world'] * (features.COUNT_BUDGET_CHARS // 11 + 1)
    assert features.token_counts(tokenizer, many, False) == [11] * len(many)  # characters: over the budget


def test_word_piece_counts_are_what_the_worker_computes():
    from bert_serving.server.engine.features import to_features, token_counts
    from bert_serving.server.engine.tokenization import BertTokenizer
    from tiny_model import bundled_vocab_file

    tokenizer = BertTokenizer(str(bundled_vocab_file()))
    texts = ['hello world', 'the quick brown fox jumps over an extraordinarily lazy dog', '', 'naïve café!']
    features = to_features(tokenizer, texts, is_tokenized=False, max_seq_len=None)
    assert token_counts(tokenizer, texts, False) == [len(f) - 2 for f in features]  # less [CLS] and [SEP]
    assert token_counts(tokenizer, [['a', 'b'], ['c']], True) == [2, 1]
    assert token_counts(tokenizer, ['ok', 3, None], False)[1:] == [0, 0]  # the worker reports the bad types
    assert token_counts(tokenizer, [['a'], 'not a list'], True) == [1, 0]


def test_a_single_piece_keeps_the_request_order(clock):
    s = make(clock)
    s.accept(b'c', 1, ['long ' * 9, 'a', 'mid mid'], is_tokenized=False, show_tokens=True)
    [piece] = queued_pieces(s)
    assert piece.rows == [0, 1, 2] and piece.show_tokens


def test_serials_and_piece_ids_are_unique(clock):
    s = make(clock, max_batch_size=4)
    serials = [s.accept(b'c', 7, words(10), False) for _ in range(3)]  # one client reusing its req_id
    assert len(set(serials)) == 3
    ids = [p.piece_id for p in queued_pieces(s)]
    assert len(ids) == len(set(ids)) == 9
    assert {p.key for p in queued_pieces(s)} == {(b'c', 7, serial) for serial in serials}


# -- priority and batching -------------------------------------------------------------------------
def test_a_small_request_goes_before_a_big_one_queued_earlier(clock):
    s = make(clock, max_batch_size=8, priority_batch_size=4)
    big = s.accept(b'big', 1, words(40), False)
    small = s.accept(b'small', 1, words(3), False)
    s.add_worker(b'w', credit=1, label='0')
    [batch] = s.take_batches()
    assert [p.serial for p in batch.pieces] == [small]  # a piece of the big one would not fit beside it
    s.done(b'w', batch.batch_id)
    [batch] = s.take_batches()
    assert [p.serial for p in batch.pieces] == [big]


def test_small_requests_fill_the_room_a_big_piece_leaves(clock):
    s = make(clock, max_batch_size=10, priority_batch_size=4)
    big = s.accept(b'big', 1, words(31), False)  # pieces of 8, 8, 8 and 7 rows
    small = s.accept(b'small', 1, words(2), False)
    s.add_worker(b'w', credit=1, label='0')
    [batch] = s.take_batches()
    assert [(p.serial, len(p.rows)) for p in batch.pieces] == [(small, 2), (big, 8)]


def test_batches_mix_clients_up_to_max_batch_size(clock):
    s = make(clock, max_batch_size=10, priority_batch_size=0)
    for i, n in enumerate((3, 4, 2, 5)):
        s.accept(b'client-%d' % i, i, words(n), False)
    s.add_worker(b'w', credit=5, label='0')
    batches = s.take_batches()
    assert len(batches) == 1  # the 5 rows left do not fill a batch: no prefetch
    s.done(b'w', batches[0].batch_id)
    batches += s.take_batches()
    assert [[p.client for p in b.pieces] for b in batches] == [[b'client-0', b'client-1', b'client-2'],
                                                               [b'client-3']]
    assert [sum(len(p.rows) for p in b.pieces) for b in batches] == [9, 5]
    assert all(b.worker == b'w' for b in batches)
    assert len({b.batch_id for b in batches}) == 2


def test_no_worker_means_no_batch(clock):
    s = make(clock)
    s.accept(b'c', 1, words(3), False)
    assert s.take_batches() == []
    assert s.snapshot()['num_queued_piece'] == 1


# -- credit ----------------------------------------------------------------------------------------
def test_a_worker_gets_at_most_its_credit_and_done_returns_one(clock):
    s = make(clock, max_batch_size=4, priority_batch_size=0)
    for i in range(5):
        s.accept(b'c', i, words(4), False)  # one full batch each
    s.add_worker(b'w', credit=2, label='0')
    first = s.take_batches()
    assert len(first) == 2
    assert s.take_batches() == []
    s.done(b'w', first[0].batch_id)
    s.done(b'w', first[0].batch_id)  # a repeated DONE returns nothing more
    s.done(b'w', 12345)  # nor does one of a batch it never had
    assert len(s.take_batches()) == 1
    assert s.take_batches() == []


def test_a_busy_worker_gets_a_batch_ahead_only_when_the_queue_fills_one(clock):
    """Small requests queued behind a computing worker wait for its DONE and go as one batch
    (fewer, larger model calls); a queue that fills max_batch_size rows is prefetched at once."""
    s = make(clock, max_batch_size=8, priority_batch_size=0)
    s.accept(b'c', 0, words(3), False)
    s.add_worker(b'w', credit=2, label='0')
    [first] = s.take_batches()
    for i in range(1, 5):  # 4 one-row requests arrive while the first batch computes
        s.accept(b'c%d' % i, i, words(1), False)
        assert s.take_batches() == []
    s.done(b'w', first.batch_id)
    [joined] = s.take_batches()
    assert [p.client for p in joined.pieces] == [b'c1', b'c2', b'c3', b'c4']
    s.accept(b'big', 9, words(8), False)  # a whole batch queued: prefetched behind the one computing
    [ahead] = s.take_batches()
    assert [p.client for p in ahead.pieces] == [b'big']
    assert sorted(s.workers[b'w'].batches) == [joined.batch_id, ahead.batch_id]


def _answer_a_cohort(s, clock, clients: int, took: float):
    """``clients`` one-sentence requests computed in one batch that took ``took`` seconds."""
    for i in range(clients):
        s.accept(b'c%d' % i, i, words(1), False)
    [batch] = s.take_batches()
    assert len(batch.pieces) == clients
    clock.advance(took)
    s.done(b'w', batch.batch_id)
    return clock.now


def test_a_worker_waits_for_the_clients_its_last_batch_answered_before_a_smaller_batch(clock):
    """Clients answered together come back together: a worker waits for as many requests as its last
    batch held (here 4) rather than take the first that comes back alone, so the clients do not split
    into groups that take turns in smaller batches."""
    from bert_serving.server.pipeline.scheduler import COHORT_WAIT_MAX_SECONDS
    s = make(clock, max_batch_size=32, priority_batch_size=0)
    s.add_worker(b'w', credit=1, label='0')
    done_at = _answer_a_cohort(s, clock, 4, took=1.0)
    assert s.wake_at() is None  # nothing queued: nothing to wake for
    for i in range(3):
        s.accept(b'c%d' % i, 10 + i, words(1), False)
        clock.advance(0.001)
        assert s.take_batches() == []
    assert s.wake_at() == pytest.approx(done_at + COHORT_WAIT_MAX_SECONDS)
    s.accept(b'c3', 13, words(1), False)  # the fourth is back: one batch of all four
    [batch] = s.take_batches()
    assert [p.client for p in batch.pieces] == [b'c0', b'c1', b'c2', b'c3']
    assert s.wake_at() is None


@pytest.mark.parametrize('took, waits', [(1.0, 0.010), (0.02, 0.005), (0.0, 0.0)])
def test_the_wait_for_a_cohort_is_a_quarter_of_its_batch_time_and_at_most_10_ms(clock, took, waits):
    s = make(clock, max_batch_size=32, priority_batch_size=0)
    s.add_worker(b'w', credit=1, label='0')
    done_at = _answer_a_cohort(s, clock, 4, took=took)
    s.accept(b'back', 9, words(1), False)
    if waits:
        assert s.take_batches() == []
        assert s.wake_at() == pytest.approx(done_at + waits)
        clock.advance(waits * 0.99)
        assert s.take_batches() == []
        clock.advance(waits * 0.02)
    [batch] = s.take_batches()  # the others did not come back in time: the one waiting goes alone
    assert [p.client for p in batch.pieces] == [b'back']


def test_a_lone_client_never_waits(clock):
    """A batch of one request (one client sending one request after another) leaves nobody to wait
    for: its next request goes at once, so a single sentence's round trip pays nothing."""
    s = make(clock, max_batch_size=32, priority_batch_size=0)
    s.add_worker(b'w', credit=1, label='0')
    _answer_a_cohort(s, clock, 1, took=1.0)
    s.accept(b'c0', 5, words(1), False)
    [batch] = s.take_batches()
    assert [p.req_id for p in batch.pieces] == [5]


def test_a_queue_that_fills_a_batch_never_waits_for_a_cohort(clock):
    s = make(clock, max_batch_size=4, priority_batch_size=0)
    s.add_worker(b'w', credit=1, label='0')
    _answer_a_cohort(s, clock, 4, took=1.0)
    s.accept(b'other', 7, words(2), False)
    assert s.take_batches() == []
    s.accept(b'more', 8, words(2), False)  # 4 rows queued: a whole batch
    [batch] = s.take_batches()
    assert [p.client for p in batch.pieces] == [b'other', b'more']


def test_with_two_workers_a_waiting_one_leaves_the_batch_to_the_other(clock):
    """The wait is per worker: while one waits for its clients, a free worker with no one to wait
    for takes what is queued at once, so no request waits on a worker's cohort while another is idle."""
    s = make(clock, max_batch_size=32, priority_batch_size=0)
    s.add_worker(b'w', credit=1, label='0')
    _answer_a_cohort(s, clock, 4, took=1.0)
    s.accept(b'back', 9, words(1), False)
    assert s.take_batches() == []  # w waits for its four clients
    s.add_worker(b'v', credit=1, label='1')
    [batch] = s.take_batches()
    assert batch.worker == b'v' and [p.client for p in batch.pieces] == [b'back']


def test_the_least_busy_worker_goes_first(clock):
    s = make(clock, max_batch_size=4, priority_batch_size=0)
    for i in range(4):
        s.accept(b'c', i, words(4), False)
    s.add_worker(b'a', credit=1, label='a')
    s.add_worker(b'b', credit=3, label='b')
    assert [b.worker for b in s.take_batches()] == [b'b', b'b', b'a', b'b']


def test_credit_is_at_least_one(clock):
    s = make(clock)
    s.accept(b'c', 1, words(2), False)
    s.add_worker(b'w', credit=0, label='0')
    assert len(s.take_batches()) == 1


# -- confirmations ---------------------------------------------------------------------------------
def test_a_piece_stays_in_flight_after_done_until_confirmed(clock):
    s = make(clock)
    s.accept(b'c', 1, words(3), False)
    s.add_worker(b'w', credit=1, label='0')
    [batch] = s.take_batches()
    s.done(b'w', batch.batch_id)
    assert s.snapshot()['num_inflight_piece'] == 1
    # Lost between DONE and its result reaching the sink: the piece is queued again. It was computed,
    # so the loss is not held against it (only the batch being computed counts).
    assert s.remove_worker(b'w', 'died') == []
    [again] = queued_pieces(s)
    assert again.piece_id == batch.pieces[0].piece_id and again.attempt == 0


def test_only_the_batch_being_computed_counts_a_loss_not_the_prefetched_one(clock):
    """A worker hung on one batch holds the next one prefetched: replacing it twice must fail only the
    request that hangs, never the one queued behind it."""
    s = make(clock, max_batch_size=1)
    s.accept(b'hang', 1, words(1), False)
    s.accept(b'next', 1, words(1), False)
    for attempt, worker in enumerate((b'w1', b'w2'), start=1):
        s.add_worker(worker, credit=2, label=worker.decode())
        first, second = s.take_batches()
        assert (first.pieces[0].client, second.pieces[0].client) == (b'hang', b'next')
        failures = s.remove_worker(worker, 'held a batch for more than -batch_timeout')
        assert first.pieces[0].attempt == attempt and second.pieces[0].attempt == 0
    assert [f.client for f in failures] == [b'hang']
    [left] = queued_pieces(s)
    assert left.client == b'next'


def test_a_confirmed_piece_is_forgotten(clock):
    s = make(clock)
    serial = s.accept(b'c', 1, words(3), False)
    s.add_worker(b'w', credit=1, label='0')
    [batch] = s.take_batches()
    s.done(b'w', batch.batch_id)
    s.confirm([batch.pieces[0].piece_id])
    snap = s.snapshot()
    # Open until the sink says FINISHED, but its rows are computed: they hold no room in the queue.
    assert (snap['num_inflight_piece'], snap['num_open_request'], snap['num_open_rows']) == (0, 1, 0)
    assert s.remove_worker(b'w', 'died') == []
    assert s.take_batches() == [] and queued_pieces(s) == []
    s.finished([serial])
    assert s.snapshot()['num_open_request'] == 0


def test_confirming_unknown_or_repeated_pieces_is_harmless(clock):
    s = make(clock)
    s.accept(b'c', 1, words(3), False)
    s.add_worker(b'w', credit=1, label='0')
    [batch] = s.take_batches()
    piece_id = batch.pieces[0].piece_id
    s.confirm([999, -1])
    assert s.snapshot()['num_inflight_piece'] == 1
    s.confirm([piece_id, piece_id])
    s.confirm([piece_id])
    assert s.snapshot()['num_inflight_piece'] == 0
    s.finished([424242])  # an unknown serial too
    assert s.snapshot()['num_open_request'] == 1


# -- loss and re-queue -----------------------------------------------------------------------------
def test_a_lost_workers_pieces_go_back_to_the_front(clock):
    s = make(clock, max_batch_size=4, priority_batch_size=0)
    s.accept(b'lost', 1, words(8), False)  # two pieces
    s.add_worker(b'w1', credit=1, label='1')
    [batch] = s.take_batches()
    s.accept(b'small', 2, words(2), False)  # would be next without the loss
    assert s.remove_worker(b'w1', 'was killed') == []
    assert s.remove_worker(b'w1', 'again') == []  # removing twice does nothing
    s.add_worker(b'w2', credit=1, label='2')
    [retry] = s.take_batches()
    assert [p.piece_id for p in retry.pieces] == [p.piece_id for p in batch.pieces]
    assert [p.attempt for p in retry.pieces] == [1]
    assert retry.worker == b'w2'


def test_a_second_loss_fails_the_request_and_its_queued_pieces_never_go_out(clock):
    s = make(clock, max_batch_size=4, priority_batch_size=0)
    doomed = s.accept(b'c', 5, words(12), False)  # three pieces
    s.add_worker(b'w1', credit=1, label='1')
    [first] = s.take_batches()
    s.remove_worker(b'w1', 'was killed')
    s.add_worker(b'w2', credit=1, label='2')
    [second] = s.take_batches()
    assert dispatched_ids([second]) == dispatched_ids([first])
    failures = s.remove_worker(b'w2', 'was silent for 11s')
    assert len(failures) == 1
    f = failures[0]
    assert (f.client, f.req_id, f.serial) == (b'c', 5, doomed)
    assert 'lost twice' in f.message and '2 was silent for 11s' in f.message
    other = s.accept(b'other', 6, words(2), False)
    s.add_worker(b'w3', credit=5, label='3')
    batches = s.take_batches()
    assert [p.serial for b in batches for p in b.pieces] == [other]
    assert s.snapshot()['num_open_request'] == 2  # failed, but open until the sink says FINISHED
    s.finished([doomed])
    assert s.snapshot()['num_open_rows'] == 2


def test_one_failure_per_request_however_many_pieces_are_lost(clock):
    s = make(clock, max_batch_size=4, priority_batch_size=0)
    s.accept(b'c', 1, words(8), False)
    s.add_worker(b'w1', credit=2, label='1')
    assert len(s.take_batches()) == 2
    s.remove_worker(b'w1', 'died')
    s.add_worker(b'w2', credit=2, label='2')
    assert len(s.take_batches()) == 2
    assert len(s.remove_worker(b'w2', 'died')) == 1
    assert MAX_ATTEMPTS == 2


def test_a_loss_after_the_request_finished_fails_nothing(clock):
    s = make(clock)
    serial = s.accept(b'c', 1, words(3), False)
    s.add_worker(b'w', credit=1, label='0')
    s.take_batches()
    s.finished([serial])  # e.g. the sink timed it out
    assert s.remove_worker(b'w', 'died') == []
    assert s.snapshot()['num_inflight_piece'] == 0 and queued_pieces(s) == []


# -- capacity, busy, shutting down -----------------------------------------------------------------
def test_busy_when_the_queue_is_full_and_finished_frees_room(clock):
    s = make(clock, max_queue_rows=10)
    first = s.accept(b'a', 1, words(8), False)
    with pytest.raises(Refused) as busy:
        s.accept(b'b', 1, words(3), False)
    assert busy.value.code == ErrorCode.BUSY and busy.value.retry_after > 0
    assert '-max_queue_rows' in str(busy.value)
    s.accept(b'b', 2, words(2), False)  # exactly full fits
    s.finished([first])
    s.accept(b'b', 3, words(8), False)
    assert s.snapshot()['num_open_rows'] == 10


def test_busy_when_the_queued_bytes_are_full_and_finished_frees_them(clock):
    s = make(clock, max_queue_bytes=1000)
    first = s.accept(b'a', 1, words(2), False, size=900)
    with pytest.raises(Refused) as busy:
        s.accept(b'b', 1, words(1), False, size=101)
    assert busy.value.code == ErrorCode.BUSY and '-max_queue_bytes' in str(busy.value)
    second = s.accept(b'b', 2, words(1), False, size=100)  # exactly full fits
    s.finished([first])
    assert s.snapshot()['num_open_bytes'] == 100
    s.finished([second])
    s.accept(b'c', 1, words(1), False, size=5000)  # into an empty queue, a bigger one still goes
    assert s.snapshot()['num_open_bytes'] == 5000


def test_a_reply_over_max_reply_bytes_is_refused_before_anything_is_computed(clock):
    s = make(clock, reply_row_bytes=25 * 768 * 4, max_reply_bytes=1 << 20)  # NONE pooling, 25 tokens of 768
    s.accept(b'a', 1, words(13), False)  # 13 x 76,800 bytes fit in 1 MiB
    with pytest.raises(Refused) as refused:
        s.accept(b'a', 2, words(14), False)
    assert refused.value.code == ErrorCode.BAD_REQUEST
    assert '-max_reply_bytes' in str(refused.value) and 'at most 13 inputs' in str(refused.value)
    assert s.snapshot()['num_open_request'] == 1


def test_one_request_bigger_than_the_queue_at_a_time_goes_and_frees_room_as_its_pieces_are_confirmed(clock):
    s = make(clock, max_queue_rows=10, max_queue_bytes=1000, max_batch_size=4, priority_batch_size=0)
    first = s.accept(b'x', 1, words(9), False, size=10)
    with pytest.raises(Refused):  # an ordinary request that does not fit waits
        s.accept(b'x', 2, words(2), False, size=10)
    big = s.accept(b'a', 1, words(24), False, size=2400)  # bigger than the queue: goes even so
    assert (s.open_rows, s.open_bytes) == (33, 2410)
    with pytest.raises(Refused) as busy:  # one at a time
        s.accept(b'c', 1, words(11), False)
    assert busy.value.code == ErrorCode.BUSY and 'another request bigger than the queue' in str(busy.value)
    with pytest.raises(Refused):  # others wait until it has streamed down into the bound
        s.accept(b'b', 1, words(1), False)
    s.finished([first])
    s.add_worker(b'w', credit=4, label='0')
    batches = s.take_batches()
    assert [p.serial for b in batches for p in b.pieces] == [big] * 4
    s.confirm([p.piece_id for b in batches for p in b.pieces])  # 16 rows computed, 8 left
    assert (s.open_rows, s.open_bytes) == (8, 800)
    small = s.accept(b'b', 2, words(2), False, size=100)  # room freed by the big one's pieces
    with pytest.raises(Refused):
        s.accept(b'b', 3, words(1), False)  # 8 + 2 rows fill the 10
    s.finished([big])
    assert (s.open_rows, s.open_bytes) == (2, 100)
    s.accept(b'c', 2, words(1), False, size=5000)  # the next big one (in bytes) goes
    s.finished([small])
    assert s.open_rows == 1 and s.oversize is not None


def test_the_request_bigger_than_the_queue_takes_turns_with_the_others(clock):
    # A request queued behind a big one gets a piece every other batch, not after the whole of it.
    s = make(clock, max_batch_size=4, priority_batch_size=0, max_queue_rows=30)
    big = s.accept(b'big', 1, words(40), False)  # 10 pieces, bigger than the queue
    s.add_worker(b'w', credit=1, label='0')
    for _ in range(4):  # until it has streamed down to 24 open rows
        [batch] = s.take_batches()
        s.done(b'w', batch.batch_id)
        s.confirm([p.piece_id for p in batch.pieces])
    small = s.accept(b'small', 1, words(4), False)  # 1 piece
    other = s.accept(b'other', 1, words(2), False)  # 1 piece
    assert [p.serial for p in queued_pieces(s)] == [big, small, big, other] + [big] * 4
    order = []
    for _ in range(8):
        [batch] = s.take_batches()
        order.append(batch.pieces[0].serial)
        s.done(b'w', batch.batch_id)
        s.confirm([p.piece_id for p in batch.pieces])
    assert order == [big, small, big, other] + [big] * 4


def test_ordinary_requests_are_served_first_come_first_served(clock):
    # Taking turns among ordinary requests would make all of them finish late together.
    s = make(clock, max_batch_size=4, priority_batch_size=0)
    a = s.accept(b'a', 1, words(12), False)  # 3 pieces
    b = s.accept(b'b', 1, words(8), False)  # 2 pieces
    assert [p.serial for p in queued_pieces(s)] == [a, a, a, b, b]


def test_confirming_a_piece_twice_frees_its_room_once(clock):
    s = make(clock, max_batch_size=2, priority_batch_size=0)
    serial = s.accept(b'a', 1, words(4), False, size=41)
    s.add_worker(b'w', credit=2, label='0')
    first = s.take_batches()[0].pieces[0].piece_id
    s.confirm([first])
    s.confirm([first])
    assert (s.open_rows, s.open_bytes) == (2, 21)  # 20 freed; the odd byte goes with the request
    s.finished([serial])
    assert (s.open_rows, s.open_bytes) == (0, 0)


def test_finished_requests_leave_no_queue_entries_behind(clock):
    # With no worker free (all hung or restarting) the sink times requests out: their pieces must
    # not pile up in the queue, which is bounded by -max_queue_rows only through open requests.
    s = make(clock, max_queue_rows=10)
    for i in range(1000):
        s.finished([s.accept(b'c', i, words(5), False)])
    assert len(s.priority) + len(s.normal) < 100  # not one id per request ever finished
    assert s.snapshot()["num_queued_piece"] == 0


# -- random operations -----------------------------------------------------------------------------
class _SinkModel:
    """What the sink does, as far as the scheduler can tell: rows arrive, duplicates are dropped,
    pieces are confirmed and requests reported finished, with feedback delivered late."""

    def __init__(self, scheduler: Scheduler, rng: random.Random):
        self.s = scheduler
        self.rng = rng
        self.texts = {}  # serial -> texts
        self.rows = {}  # serial -> {row: text}, for requests not finished yet
        self.answered = {}  # serial -> {row: text}
        self.failed = {}  # serial -> message
        self.feedback = []  # ('confirm' | 'finished', ids) on their way to the scheduler

    def register(self, serial: int, texts: list) -> None:
        self.texts[serial] = texts
        self.rows[serial] = {}

    def result(self, piece) -> None:
        self.feedback.append(('confirm', [piece.piece_id]))
        rows = self.rows.get(piece.serial)
        if rows is None:
            return  # finished already
        if not set(piece.rows) & set(rows):
            rows.update(zip(piece.rows, piece.texts))
        if len(rows) == len(self.texts[piece.serial]):
            self.answered[piece.serial] = self.rows.pop(piece.serial)
            self.feedback.append(('finished', [piece.serial]))

    def fail(self, serial: int, message: str) -> None:
        if self.rows.pop(serial, None) is not None:
            self.failed[serial] = message
            self.feedback.append(('finished', [serial]))

    def deliver_feedback(self, everything: bool = False) -> None:
        keep = []
        for item in self.feedback:
            if everything or self.rng.random() < 0.6:
                (self.s.confirm if item[0] == 'confirm' else self.s.finished)(item[1])
            else:
                keep.append(item)
        self.feedback = keep


def _check_in_flight(s: Scheduler, computing: dict, new_batches) -> None:
    """A piece is never dispatched while a live worker still holds it unconfirmed."""
    held = {}
    for worker, batches in computing.items():
        if worker in s.workers:
            for batch in batches:
                for p in batch.pieces:
                    if p.piece_id in s.pieces and s.holder.get(p.piece_id) == worker:
                        held[p.piece_id] = worker
    for batch in new_batches:
        assert len(batch.pieces) == len({p.piece_id for p in batch.pieces})
        assert sum(len(p.rows) for p in batch.pieces) <= s.cfg.max_batch_size
        for p in batch.pieces:
            assert held.get(p.piece_id, batch.worker) == batch.worker == s.holder[p.piece_id]
            held[p.piece_id] = batch.worker


@pytest.mark.parametrize('seed', range(8))
def test_random_operations_answer_every_row_once_or_fail_the_request(clock, seed):
    rng = random.Random(seed)
    s = make(clock, num_worker=3, max_batch_size=rng.choice([4, 8, 16]), priority_batch_size=4,
             max_queue_rows=120, batch_timeout=20.0, heartbeat_timeout=5.0)
    sink = _SinkModel(s, rng)
    computing = {}  # worker -> batches it holds and has not sent to the sink yet
    accepted = {}
    workers = 0

    def add_worker():
        nonlocal workers
        workers += 1
        identity = b'w%d' % workers
        s.add_worker(identity, credit=rng.randint(1, 3), label=str(workers), remote=rng.random() < 0.5)
        computing[identity] = []

    def lose(identity, reason):
        for batch in computing.pop(identity, []):
            if rng.random() < 0.3:  # its results had left before it died
                for p in batch.pieces:
                    sink.result(p)
        for f in s.remove_worker(identity, reason):
            assert f.serial in accepted and (f.client, f.req_id) == accepted[f.serial][:2]
            sink.fail(f.serial, f.message)

    def dispatch():
        batches = s.take_batches()
        _check_in_flight(s, computing, batches)
        for b in batches:
            computing[b.worker].append(b)

    for _ in range(3):
        add_worker()
    for step in range(400):
        op = rng.random()
        if op < 0.25:
            client, n = b'c%d' % rng.randint(0, 5), rng.choice([1, 2, 3, 5, 9, 17, 40])
            texts = [f'{client.decode()}-{step}-{i} ' * rng.randint(1, 4) for i in range(n)]
            open_rows = s.open_rows
            try:
                serial = s.accept(client, step, texts, is_tokenized=False)
            except Refused as e:
                assert e.code == ErrorCode.BUSY and s.requests and open_rows + n > s.cfg.max_queue_rows
            else:
                accepted[serial] = (client, step, texts)
                sink.register(serial, texts)
        elif op < 0.45:
            dispatch()
        elif op < 0.65:  # a worker computes a batch, pushes its rows, then says DONE
            busy = [w for w, batches in computing.items() if batches]
            if busy:
                worker = rng.choice(busy)
                batch = computing[worker].pop(rng.randrange(len(computing[worker])))
                fate = rng.random()  # a dropped connection loses the batch, its rows, or its DONE
                if fate > 0.1:
                    for p in batch.pieces:
                        if fate > 0.15 or rng.random() < 0.5:
                            sink.result(p)
                if fate > 0.2:
                    s.seen(worker)
                    s.done(worker, batch.batch_id)
        elif op < 0.8:
            sink.deliver_feedback()
        elif op < 0.85 and computing:
            lose(rng.choice(sorted(computing)), 'was killed')
            add_worker()
        elif op < 0.9:
            clock.advance(rng.choice([0.5, 2.0, 6.0]))
            for identity in list(computing):
                if rng.random() < 0.7:  # a heartbeat: the batches it holds, after a PONG sent now or not yet
                    s.seen(identity, None, [b.batch_id for b in computing[identity]],
                           s.mark(identity) if rng.random() < 0.8 else None)
            for identity, reason in s.overdue():
                lose(identity, reason)
                add_worker()
        elif op < 0.93 and sink.rows:
            sink.fail(rng.choice(sorted(sink.rows)), 'timeout')
        elif op < 0.96:
            busy = [w for w, batches in computing.items() if batches]
            if busy:
                worker = rng.choice(busy)
                s.send_failed(computing[worker].pop())
        # The queue holds the rows not computed yet: those of the open requests' unconfirmed pieces.
        assert s.open_rows == sum(len(s.pieces[p].rows) for r in s.requests.values() for p in r.pieces) \
            <= s.cfg.max_queue_rows
        waiting = s.queued
        assert waiting <= set(s.pieces) and not waiting & set(s.holder)
        assert waiting <= set(s.priority) | set(s.normal)
        assert s.snapshot()['num_queued_piece'] == len(waiting)

    # Calm: reliable workers until everything accepted has ended.
    for _ in range(1000):
        if not s.requests and not sink.feedback:
            break
        clock.advance(SEND_BACKOFF_SECONDS)
        dispatch()
        for worker in list(computing):
            s.seen(worker, None, [], s.mark(worker))
            for batch in computing[worker]:
                for p in batch.pieces:
                    sink.result(p)
                s.done(worker, batch.batch_id)
            computing[worker] = []
        sink.deliver_feedback(everything=True)
        for identity, reason in s.overdue():  # results lost earlier are sent again
            lose(identity, reason)
            add_worker()
    assert not s.requests and not sink.rows

    assert set(sink.answered) | set(sink.failed) == set(accepted)
    assert not set(sink.answered) & set(sink.failed)
    for serial, rows in sink.answered.items():
        assert rows == dict(enumerate(accepted[serial][2]))  # every row, each with its own input
    for message in sink.failed.values():
        assert message == 'timeout' or 'lost twice' in message
    assert (s.open_rows, s.pieces, s.holder) == (0, {}, {})


def test_a_piece_on_its_retry_goes_in_a_batch_of_its_own(clock):
    s = make(clock, max_batch_size=8)
    s.accept(b'poison', 1, words(1), False)
    s.add_worker(b'w1', credit=1, label='1')
    [first] = s.take_batches()
    s.remove_worker(b'w1', 'died')
    s.accept(b'other', 1, words(2), False)
    s.add_worker(b'w2', credit=2, label='2')
    [retry] = s.take_batches()
    s.done(b'w2', retry.batch_id)
    [rest] = s.take_batches()
    assert [p.client for p in retry.pieces] == [b'poison'] and retry.pieces[0].attempt == 1
    assert [p.client for p in rest.pieces] == [b'other']
