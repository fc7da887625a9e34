"""Properties that hold whatever the model: batching and padding never change a vector, token-level
output is zero past each input, and an empty input is [CLS] [SEP] in its own row."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from bert_serving.server.config import EngineConfig
from bert_serving.server.engine.encoder import Encoder
from bert_serving.server.engine import features
from bert_serving.server.engine.features import pad_batch

ATOL = 1e-5

TINY_CASES = [
    dict(pooling_strategy='REDUCE_MEAN'),
    dict(pooling_strategy='REDUCE_MAX', pooling_layer=(-1,)),
    dict(pooling_strategy='SEP_TOKEN', pooling_layer=(-1,)),
    dict(pooling_strategy='CLS_POOLED'),
    dict(pooling_strategy='NONE'),
]

LONG_TEXT = ' '.join(['the quick brown fox jumps over the lazy dog'] * 6)


def _case_id(case: dict) -> str:
    return '-'.join(str(v) for v in case.values())


class CountingRunner:
    """Wraps an Encoder's graph runner to record the [B, T] shape of every TensorFlow call (in the
    order the calls started: an Encoder with parallel_calls runs the longest first), and the most
    calls that ran at once."""

    def __init__(self, runner):
        self.runner = runner
        self.shapes = []
        self.rows = []  # the rows its dense layers computed, per call
        self.most = 0  # calls in flight at once, at most
        self._running = 0
        self._lock = threading.Lock()

    def __call__(self, ids, mask, types):
        return self.run_batch(ids, mask, types)[0]

    def run_batch(self, ids, mask, types):
        with self._lock:
            self.shapes.append(ids.shape)
            slot = len(self.rows)
            self.rows.append(None)
            self._running += 1
            self.most = max(self.most, self._running)
        try:
            out, rows = self.runner.run_batch(ids, mask, types)
        finally:
            with self._lock:
                self._running -= 1
        self.rows[slot] = rows
        return out, rows

    @property
    def packs(self):
        return self.runner.packs

    def close(self):
        self.runner.close()


def _one_at_a_time(encoder, texts):
    return np.concatenate([encoder.encode([text])[0] for text in texts])


# --- batching --------------------------------------------------------------------------------------


@pytest.mark.parametrize('case', TINY_CASES, ids=_case_id)
def test_batch_equals_one_at_a_time_tiny(case, tiny_google_dir, tiny_texts, encoders):
    encoder = encoders.get(model_dir=str(tiny_google_dir), **case)

    batched, _ = encoder.encode(tiny_texts)

    np.testing.assert_allclose(batched, _one_at_a_time(encoder, tiny_texts), atol=ATOL, rtol=0)


@pytest.mark.slow
def test_batch_equals_one_at_a_time_bundled(reference, encoders):
    encoder = encoders.get()  # the default config: REDUCE_MEAN of layer -2, max_seq_len 25

    batched, _ = encoder.encode(reference.texts)

    np.testing.assert_allclose(batched, _one_at_a_time(encoder, reference.texts), atol=ATOL, rtol=0)


@pytest.mark.parametrize('case', [dict(pooling_strategy='REDUCE_MEAN'), dict(pooling_strategy='NONE')],
                         ids=_case_id)
def test_many_small_batches_equal_one_big_batch_tiny(case, tiny_google_dir, tiny_texts, graph_cache_dir):
    config = EngineConfig(model_dir=str(tiny_google_dir), graph_tmp_dir=str(graph_cache_dir), **case)
    texts = tiny_texts * 3
    big = Encoder(config)
    small = Encoder(config, max_batch_size=2, max_batch_tokens=30)
    try:
        small.runner = counter = CountingRunner(small.runner)
        expected, expected_tokens = big.encode(texts)
        got, tokens = small.encode(texts)
    finally:
        big.close()
        small.close()

    assert len(counter.shapes) >= len(texts) // 2
    assert all(b <= 2 and (b == 1 or b * t <= 30) for b, t in counter.shapes)
    assert tokens == expected_tokens
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


@pytest.mark.slow
def test_many_small_batches_equal_one_big_batch_bundled(reference, encoders, graph_cache_dir):
    expected, _ = encoders.get().encode(reference.texts)
    small = Encoder(EngineConfig(graph_tmp_dir=str(graph_cache_dir)), max_batch_size=3, max_batch_tokens=40)
    try:
        small.runner = counter = CountingRunner(small.runner)
        got, _ = small.encode(reference.texts)
    finally:
        small.close()

    assert len(counter.shapes) >= len(reference.texts) // 3
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


def test_batches_take_few_shapes_and_few_lengths(tiny_google_dir, graph_cache_dir):
    """Each (B, T) a graph meets costs ~1.1 MB, kept per thread, so a batch has one of a few sizes
    and every batch, one input alone too, an even length (a multiple of 4 past 32 tokens, of 8
    past 64), never more than 7 tokens past its longest input. Batches of EXACT_LENGTH_SIZE inputs
    or more, which come from large requests, keep their longest input's length."""
    from bert_serving.server.engine.encoder import EXACT_LENGTH_SIZE
    from bert_serving.server.engine.features import batch_sizes

    rng = np.random.default_rng(0)
    words = ['alpha', 'beta', 'gamma', 'delta', 'river', 'bank', 'quick', 'fox']
    config = EngineConfig(model_dir=str(tiny_google_dir), graph_tmp_dir=str(graph_cache_dir), max_seq_len=None)
    encoder = Encoder(config, max_batch_size=64)
    exact, small = 0, []
    try:
        encoder.runner = counter = CountingRunner(encoder.runner)
        for request in range(50):  # 40 small requests, then 10 large ones
            size = rng.integers(1, 30) if request < 40 else rng.integers(100, 160)
            # The large ones of similar lengths: this model's attention is most of a token's cost
            # (D = 32), so mixed lengths are cut into small calls (see encoder.ATTENTION_WIDTHS).
            low, high = (1, 90) if request < 40 else (40, 50)
            texts = [' '.join(rng.choice(words, size=rng.integers(low, high))) for _ in range(size)]
            features = encoder.featurize(texts)
            before, rows_before = len(counter.shapes), len(counter.rows)
            encoder.run(features)
            lengths = sorted(len(f.input_ids) for f in features)
            batches = counter.shapes[before:]
            # Only the first call (the shortest inputs) may take any count, filled up with one-token
            # inputs to an allowed size: fewer than a third of its rows.
            padding = sum(b for b, _ in batches) - len(features)
            assert 0 <= padding <= batches[0][0] // 3, (padding, batches)
            assert encoder.last_padded_tokens == sum(counter.rows[rows_before:])  # what the metrics report
            assert all(r <= b * t for r, (b, t) in zip(counter.rows[rows_before:], batches))
            if request < 40:
                small += batches
            for b, t in batches:
                assert b in batch_sizes(64), (b, t)
                if b >= EXACT_LENGTH_SIZE:
                    assert t in lengths, (b, t)
                    exact += 1
                else:
                    assert t % (2 if t <= 32 else 4 if t <= 64 else 8) == 0, (b, t)
                    assert t - max(x for x in lengths if x <= t) < 8, (b, t)
    finally:
        encoder.close()
    assert exact
    assert len(set(small)) < len(small) / 2  # small requests keep meeting the same few shapes


def test_token_level_output_is_cut_to_the_request_when_a_batch_is_padded_past_it(tiny_google_dir, graph_cache_dir):
    config = EngineConfig(model_dir=str(tiny_google_dir), graph_tmp_dir=str(graph_cache_dir), max_seq_len=None,
                          pooling_strategy='NONE')
    encoder = Encoder(config)
    try:
        encoder.runner = counter = CountingRunner(encoder.runner)
        texts = ['alpha beta gamma', 'alpha beta gamma delta fox']  # 5 and 7 tokens: a batch of T=8
        together, tokens = encoder.encode(texts)
        assert counter.shapes == [(2, 8)] and [len(t) for t in tokens] == [5, 7]
        assert together.shape[:2] == (2, 7)
        for i, text in enumerate(texts):
            alone, _ = encoder.encode([text])
            np.testing.assert_allclose(together[i, :alone.shape[1]], alone[0], atol=ATOL, rtol=0)
            assert not together[i, alone.shape[1]:].any()
    finally:
        encoder.close()


# --- padding ---------------------------------------------------------------------------------------


@pytest.mark.parametrize('case', TINY_CASES, ids=_case_id)
def test_a_longer_neighbour_does_not_change_a_vector_tiny(case, tiny_google_dir, encoders):
    encoder = encoders.get(model_dir=str(tiny_google_dir), **case)

    alone, _ = encoder.encode(['hello world'])
    together, tokens = encoder.encode(['hello world', LONG_TEXT])

    assert len(tokens[1]) == 25 > len(tokens[0])  # the short one really was padded
    np.testing.assert_allclose(together[:1], alone, atol=ATOL, rtol=0)


@pytest.mark.slow
def test_a_longer_neighbour_does_not_change_a_vector_bundled(reference, encoders):
    encoder = encoders.get()
    short = [text for text in reference.texts if len(text.split()) <= 4]

    for text in short:
        alone, _ = encoder.encode([text])
        together, _ = encoder.encode([text, LONG_TEXT])
        np.testing.assert_allclose(together[:1], alone, atol=ATOL, rtol=0, err_msg=text)


@pytest.mark.parametrize('model, fields', [
    ('tiny', {}),
    # '' is [CLS] [SEP], both masked: its tokens attend among themselves, never to the padding.
    ('tiny', dict(mask_cls_sep=True, pooling_strategy='CLS_TOKEN', pooling_layer=(-1,))),
    ('bundled', {}),
], ids=['tiny', 'tiny-mask_cls_sep-CLS_TOKEN', 'bundled'])
def test_padding_length_does_not_change_a_vector(model, fields, tiny_google_dir, encoders):
    encoder = encoders.get(model_dir=str(tiny_google_dir), **fields) if model == 'tiny' else encoders.get()
    features = encoder.featurize(['hello world', 'how old are you? ||| what is your age?', ''])
    longest = max(len(f.input_ids) for f in features)

    results = [encoder.runner(*pad_batch(features, length))
               for length in (longest, 25, encoder.bert_config.max_position_embeddings)]

    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], atol=ATOL, rtol=0)


@pytest.mark.slow
def test_max_seq_len_does_not_change_short_inputs(reference, encoders):
    short = [text for text, tokens in zip(reference.texts, reference.tokens_128) if len(tokens) <= 25]
    at_25, tokens_25 = encoders.get(max_seq_len=25).encode(short)
    at_128, tokens_128 = encoders.get(max_seq_len=128).encode(short)

    assert tokens_25 == tokens_128
    np.testing.assert_allclose(at_128, at_25, atol=ATOL, rtol=0)


# --- token-level output ----------------------------------------------------------------------------


@pytest.mark.parametrize('fields, token_axis', [
    (dict(max_seq_len=25), 25),
    (dict(max_seq_len=None), 'longest'),
    (dict(max_seq_len=None, fixed_embed_length=True), 64),  # the tiny model's max_position_embeddings
    (dict(max_seq_len=25, mask_cls_sep=True), 25),
])
def test_none_pooling_is_exactly_zero_past_each_input(fields, token_axis, tiny_google_dir, tiny_texts, encoders):
    encoder = encoders.get(model_dir=str(tiny_google_dir), pooling_strategy='NONE', **fields)

    vectors, tokens = encoder.encode(tiny_texts)

    if token_axis == 'longest':
        token_axis = max(len(t) for t in tokens)
    assert vectors.shape == (len(tiny_texts), token_axis, 32)
    for row, row_tokens in zip(vectors, tokens):
        assert not row[len(row_tokens):].any()
        real = row[:len(row_tokens)]
        if fields.get('mask_cls_sep'):
            # [CLS] and [SEP] leave the pooling mask, so their rows are zero too.
            keep = np.array([t not in ('[CLS]', '[SEP]') for t in row_tokens])
            assert not real[~keep].any()
            real = real[keep]
        assert np.all(np.abs(real).sum(-1) > 0)


# --- empty inputs ----------------------------------------------------------------------------------


@pytest.mark.parametrize('case', [dict(pooling_strategy='REDUCE_MEAN'), dict(pooling_strategy='NONE')],
                         ids=_case_id)
def test_empty_string_is_cls_sep_and_keeps_rows_in_place(case, tiny_google_dir, encoders):
    encoder = encoders.get(model_dir=str(tiny_google_dir), **case)

    with_empty, tokens = encoder.encode(['hello world', '', '   ', 'a longer sentence here'])
    without, _ = encoder.encode(['hello world', 'a longer sentence here'])
    empty_alone, _ = encoder.encode([''])
    empty_tokenized, tokenized_tokens = encoder.encode([[]], is_tokenized=True)

    assert tokens[1] == tokens[2] == tokenized_tokens[0] == ['[CLS]', '[SEP]']
    assert np.all(np.isfinite(with_empty))
    np.testing.assert_allclose(with_empty[[0, 3]], without, atol=ATOL, rtol=0)
    np.testing.assert_allclose(with_empty[1:3], np.concatenate([empty_alone] * 2), atol=ATOL, rtol=0)
    np.testing.assert_allclose(empty_tokenized, empty_alone, atol=ATOL, rtol=0)


@pytest.mark.parametrize('max_seq_len', [32, None])
def test_a_long_text_gives_the_vector_of_its_whole_text(tiny_google_dir, encoders, monkeypatch, max_seq_len):
    """A worker tokenizes a long text on a prefix only (engine/features.py): the word pieces and the
    vectors are those of the whole text, for a single text and for each side of a pair."""
    encoder = encoders.get(model_dir=str(tiny_google_dir), max_seq_len=max_seq_len)
    texts = [LONG_TEXT * 2000, 'how old are you? ||| ' + LONG_TEXT * 500, LONG_TEXT * 300 + ' ||| ' + LONG_TEXT * 300,
             'Ωραία ΟΔΟΣ\u3000café ' * 4000, 'hello world']
    cut, cut_tokens = encoder.encode(texts)
    monkeypatch.setattr(features, 'CUT_CHARS_PER_PIECE', 10**12)  # no prefix: every text whole
    whole, whole_tokens = encoder.encode(texts)
    assert cut_tokens == whole_tokens
    np.testing.assert_array_equal(cut, whole)


class _Overlapping:
    """Wraps a graph runner: its first two calls wait for each other (so they must be in flight at
    once, or the barrier breaks after 30 s), and the call on ``fail_shape`` raises."""

    def __init__(self, runner, fail_shape=None):
        self.runner, self.fail_shape = runner, fail_shape
        self.met = threading.Barrier(2, timeout=30)
        self.calls = 0
        self.in_flight = 0
        self._lock = threading.Lock()

    def run_batch(self, ids, mask, types):
        with self._lock:
            self.calls += 1
            first_two = self.calls <= 2
            self.in_flight += 1
        try:
            if first_two:
                self.met.wait()
            if ids.shape == self.fail_shape:
                raise RuntimeError('the model broke')
            return self.runner.run_batch(ids, mask, types)
        finally:
            with self._lock:
                self.in_flight -= 1

    @property
    def packs(self):
        return self.runner.packs

    def close(self):
        self.runner.close()


def _call_shapes(encoder, features) -> list:
    """The [B, T] of each TensorFlow call ``encoder.run(features)`` makes, in the order they start."""
    runner = encoder.runner
    encoder.runner = counter = CountingRunner(runner)
    try:
        encoder.run(features)
    finally:
        encoder.runner = runner
    return counter.shapes


def _parallel_encoders(tiny_google_dir, graph_cache_dir, **fields):
    config = EngineConfig(model_dir=str(tiny_google_dir), graph_tmp_dir=str(graph_cache_dir), max_seq_len=None,
                          layer_shards=2, **fields)
    return (Encoder(config, max_batch_size=4, max_batch_tokens=64, parallel_calls=1),
            Encoder(config, max_batch_size=4, max_batch_tokens=64))


@pytest.mark.parametrize('case', [dict(pooling_strategy='REDUCE_MEAN'), dict(pooling_strategy='NONE')],
                         ids=_case_id)
def test_calls_of_one_run_overlap_and_give_the_vectors_of_one_call_at_a_time(case, tiny_google_dir, tiny_texts,
                                                                             graph_cache_dir):
    """A graph split in two parts (what a CPU worker of two cores runs) keeps two calls of a request
    in flight, and every vector and the rows reported are those of the calls run one by one."""
    one, two = _parallel_encoders(tiny_google_dir, graph_cache_dir, **case)
    try:
        assert two.parallel_calls == 2
        texts = tiny_texts * 4
        features = one.featurize(texts)
        expected = one.run(features)
        two.runner = overlap = _Overlapping(two.runner)
        got = two.run(features)
        assert overlap.calls > 2 and overlap.met.n_waiting == 0 and not overlap.met.broken
        assert two.last_padded_tokens == one.last_padded_tokens
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(two.run(features[:1]), one.run(features[:1]))  # one call: no pool
    finally:
        one.close()
        two.close()


def test_a_failed_call_is_raised_once_no_call_of_its_run_is_in_flight(tiny_google_dir, tiny_texts, graph_cache_dir):
    one, two = _parallel_encoders(tiny_google_dir, graph_cache_dir)
    try:
        features = one.featurize(tiny_texts * 4)
        shapes = _call_shapes(one, features)
        two.runner = broken = _Overlapping(two.runner, fail_shape=shapes[len(shapes) // 2])
        with pytest.raises(RuntimeError, match='the model broke'):
            two.run(features)
        assert broken.in_flight == 0
        two.runner = broken.runner
        np.testing.assert_array_equal(two.run(features), one.run(features))  # and the next run is whole
    finally:
        one.close()
        two.close()


def test_after_a_failed_call_the_calls_not_started_are_dropped(tiny_google_dir, tiny_texts, graph_cache_dir,
                                                              monkeypatch):
    """The longest call fails while the next one runs: the calls queued behind them never start. The
    other calls wait until the encoder drops the calls not started (Future.cancel), so the test does
    not depend on how fast either thread is."""
    import concurrent.futures

    one, two = _parallel_encoders(tiny_google_dir, graph_cache_dir)
    try:
        features = one.featurize(tiny_texts * 12)
        shapes = _call_shapes(one, features)
        assert len(shapes) >= 8
        released, started = threading.Event(), []
        real_cancel = concurrent.futures.Future.cancel

        def cancel(future):
            released.set()
            return real_cancel(future)

        lock, failed = threading.Lock(), []

        class FailFirst:
            packs = two.runner.packs

            def run_batch(self, ids, mask, types):
                with lock:
                    started.append(ids.shape)
                    fail = ids.shape == shapes[-1] and not failed  # the longest call, once
                    if fail:
                        failed.append(ids.shape)
                if fail:
                    raise RuntimeError('the model broke')
                assert released.wait(10), 'the encoder dropped no call after a failure'
                return runner.run_batch(ids, mask, types)

            def close(self):
                runner.close()

        runner = two.runner
        two.runner = FailFirst()
        monkeypatch.setattr(concurrent.futures.Future, 'cancel', cancel)
        with pytest.raises(RuntimeError, match='the model broke'):
            two.run(features)
        assert shapes[-1] in started[:2]  # the longest first
        assert len(started) <= 3, started  # the failed one, the one beside it, one the failed thread took
    finally:
        one.close()
        two.close()
