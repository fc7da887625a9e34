"""The wide tower computes its dense layers on the real tokens only (modeling._tower, ``token_index``):
padding costs it attention alone, so the encoder puts inputs of mixed lengths in one call, and the
vectors are those of each input alone."""

from __future__ import annotations

import numpy as np
import pytest

from bert_serving.server.engine.features import pad_batch
from bert_serving.server.engine.runner import NARROW_ROWS, PACKED_STEP_BITS, packed_rows

ATOL = 1e-5


def test_packed_rows_take_few_sizes_never_narrow_and_never_more_than_the_slots():
    sizes = set()
    for real in range(1, 20_001):
        slots = 20_001
        rows = packed_rows(real, slots)
        sizes.add(rows)
        assert rows >= real
        assert not NARROW_ROWS[0] <= rows <= NARROW_ROWS[1]  # the wide tower's weights keep their layout
        if real > NARROW_ROWS[1]:
            assert rows - real < max(1, real >> PACKED_STEP_BITS)  # under 1/16 more
    assert len(sizes) < 16 * 12  # 16 sizes per doubling past 16 rows
    assert packed_rows(3, 4) == 3  # a batch of fewer than 7 slots keeps its own size
    assert packed_rows(60, 90) == 81
    assert packed_rows(89, 90) == 90  # never past the padded slots


def test_a_padded_batch_computes_its_real_tokens_and_gives_each_input_alone(tiny_google_dir, encoders):
    """Eight inputs of 2 to 40 word pieces padded to 64 in one wide call: the dense layers compute
    their 150 tokens (rounded to 152), not the 512 slots, and each vector is the input's own."""
    encoder = encoders.get(model_dir=str(tiny_google_dir), max_seq_len=None)
    lengths = [2, 3, 5, 8, 13, 21, 34, 64]
    features = encoder.featurize([['fox'] * (n - 2) for n in lengths], is_tokenized=True)
    ids, mask, types = pad_batch(features, 64)
    batch = encoder.runner(ids, mask, types)
    assert encoder.runner.last_rows == packed_rows(sum(lengths), 8 * 64) == 152
    for row, feature in enumerate(features):
        alone = encoder.runner.run_tower(False, *pad_batch([feature], len(feature.input_ids)))
        np.testing.assert_allclose(batch[row], alone[0], atol=ATOL, rtol=0)


def _cutter(hidden_size: int, packs: bool = True):
    """An Encoder's batch cutter alone (no graph): 256 inputs and 4,096 slots a call at most."""
    from types import SimpleNamespace

    from bert_serving.server.engine.encoder import ATTENTION_WIDTHS, Encoder
    from bert_serving.server.engine.features import batch_sizes

    encoder = Encoder.__new__(Encoder)
    encoder.max_batch_size, encoder.max_batch_tokens, encoder._longest = 256, 4096, 512
    encoder._sizes = batch_sizes(256)
    encoder._attention_tokens = ATTENTION_WIDTHS * hidden_size
    encoder.runner = SimpleNamespace(packs=packs)
    return encoder


@pytest.mark.parametrize('hidden_size, packs, calls', [(384, True, 1), (384, False, 4), (32, True, 4)],
                         ids=['MiniLM-packed', 'MiniLM-xla', 'tiny-packed'])
def test_one_sentence_requests_of_mixed_lengths_go_in_one_call_where_attention_is_cheap(hidden_size, packs, calls):
    """Twelve inputs of 8 to 60 word pieces, as many small clients send them: one MiniLM call, where
    padding every input to 60 in the dense layers (as with -xla) made splitting them pay; a model as
    narrow as the tiny test model (D = 32) spends most of a token on attention, and still splits,
    though attention packs the short inputs side by side (runner.attention_layout)."""
    from types import SimpleNamespace

    lengths = np.linspace(8, 60, 12).astype(int)
    features = [SimpleNamespace(input_ids=range(n)) for n in lengths]
    batches = list(_cutter(hidden_size, packs)._batches(list(range(12)), features))
    assert sorted(i for b in batches for i in b) == list(range(12))
    assert len(batches) == calls


def test_a_batch_of_mixed_lengths_computes_its_real_tokens_and_each_input_alone(tiny_google_dir, encoders):
    encoder = encoders.get(model_dir=str(tiny_google_dir), max_seq_len=None)
    lengths = np.linspace(8, 60, 12).astype(int)
    features = encoder.featurize([['fox'] * (n - 2) for n in lengths], is_tokenized=True)
    vectors, counter = _run_counted(encoder, features)
    assert encoder.last_padded_tokens == sum(counter.rows)
    assert all(rows <= b * t for rows, (b, t) in zip(counter.rows, counter.shapes))
    alone = np.concatenate([encoder.run([f]) for f in features])
    np.testing.assert_allclose(vectors, alone, atol=ATOL, rtol=0)


@pytest.mark.parametrize('fields', [dict(pooling_strategy='NONE'), dict(pooling_strategy='CLS_POOLED'),
                                    dict(pooling_strategy='CLS_TOKEN'), dict(pooling_strategy='REDUCE_MAX'),
                                    dict(pooling_strategy='REDUCE_MEAN_MAX', pooling_layer=(-1, 0)),
                                    dict(pooling_strategy='SEP_TOKEN', mask_cls_sep=True),
                                    dict(pooling_strategy='CLS_TOKEN', mask_cls_sep=True),
                                    dict(pooling_strategy='REDUCE_MEAN', mask_cls_sep=True),
                                    dict(pooling_strategy='REDUCE_MEAN', layer_shards=2)],
                         ids=['NONE', 'CLS_POOLED', 'CLS_TOKEN', 'REDUCE_MAX', 'MEAN_MAX-2-layers', 'SEP-mask_cls_sep',
                              'CLS-mask_cls_sep', 'MEAN-mask_cls_sep', 'MEAN-split2'])
def test_every_strategy_reads_the_packed_rows_back_in_place(fields, tiny_google_dir, encoders):
    """The pooled layers return from rows to the [B, T] layout: zero past each input for NONE. The
    four inputs share one row of attention (runner.attention_layout), and each attends to its own
    tokens only: under -mask_cls_sep the empty input is [CLS] [SEP], every key of it masked, and its
    tokens still attend to each other (-10000) and never to another input's (-1e9), which the
    [CLS] and [SEP] vectors of CLS_TOKEN and SEP_TOKEN would show."""
    encoder = encoders.get(model_dir=str(tiny_google_dir), max_seq_len=None, **fields)
    features = encoder.featurize(['a', 'the quick brown fox jumps over the lazy dog', '', 'hello ||| world'])
    ids, mask, types = pad_batch(features, 40)
    assert encoder.runner.wide_feeds(ids, mask, types)[4].shape == (1, 40)
    batch = encoder.runner.run_tower(False, ids, mask, types)
    for row, feature in enumerate(features):
        n = len(feature.input_ids)
        alone = encoder.runner.run_tower(True, *pad_batch([feature], n))[0]
        got = batch[row][:n] if encoder.is_token_level else batch[row]
        np.testing.assert_allclose(got, alone, atol=ATOL, rtol=0)
        if encoder.is_token_level:
            assert not batch[row][n:].any()


def test_with_xla_every_slot_is_a_row():
    """XLA compiles a graph per input shape; packed rows would add a dimension to them, so with -xla
    the wide tower computes every slot, as before packing, and attention keeps the [B, T] layout."""
    from types import SimpleNamespace

    from bert_serving.server.engine.runner import GraphRunner

    mask = np.zeros((4, 30), np.int32)
    mask[:, :5] = 1
    ids = types = np.zeros_like(mask)
    *_, packed, layout = GraphRunner.wide_feeds(SimpleNamespace(packs=True), ids, mask, types)
    *_, every, slots = GraphRunner.wide_feeds(SimpleNamespace(packs=False), ids, mask, types)
    assert list(packed) == [r * 30 + c for r in range(4) for c in range(5)] + [120] * (81 - 20)
    assert layout.tolist() == [[r * 30 + c for r in range(4) for c in range(5)] + [120] * 10]  # one row
    assert list(every) == list(range(120))
    assert slots.tolist() == np.arange(120).reshape(4, 30).tolist()


def test_attention_packs_whole_inputs_side_by_side_in_rows_of_the_padded_length():
    """attention_layout: every real slot once, each input whole and in order in one row, longest
    first into the first row with room; the row count one of the batch sizes; the rest empty (B x T)."""
    from bert_serving.server.engine.features import batch_sizes
    from bert_serving.server.engine.runner import attention_layout

    rng = np.random.default_rng(7)
    for _ in range(200):
        b = int(rng.integers(1, 40))
        t = int(rng.integers(1, 130))
        lengths = rng.integers(1, t + 1, b)
        layout = attention_layout(lengths, t)
        assert layout.dtype == np.int32 and layout.shape[1] == t
        assert layout.shape[0] in batch_sizes(b) and layout.shape[0] <= b
        real = layout[layout < b * t]
        assert sorted(real.tolist()) == sorted(i * t + j for i in range(b) for j in range(lengths[i]))
        for row in layout:
            owners = [v // t for v in row if v < b * t]
            for i in set(owners):  # whole and in order
                assert [v for v in row if v < b * t and v // t == i] == list(range(i * t, i * t + lengths[i]))
        # First fit decreasing never needs more than twice the least number of rows, and one row
        # per input longer than half of T.
        least = max(-(-int(lengths.sum()) // t), int((lengths > t / 2).sum()))
        assert layout.shape[0] <= next(s for s in batch_sizes(b) if s >= min(b, 2 * least))
    # Thirty-one inputs of a mix of lengths (860 tokens) padded to 96: 12 rows where there were 31 (9 at least).
    lengths = np.array([96, 12, 40, 33, 21, 17, 9, 55, 28, 14, 19, 23, 47, 31, 11, 8, 26, 38, 15, 22,
                        61, 18, 29, 13, 35, 16, 24, 20, 42, 10, 27])
    assert attention_layout(lengths, 96).shape == (12, 96)


@pytest.mark.parametrize('fields', [dict(pooling_strategy='REDUCE_MEAN'), dict(pooling_strategy='NONE'),
                                    dict(pooling_strategy='SEP_TOKEN', mask_cls_sep=True),
                                    dict(pooling_strategy='CLS_POOLED')],
                         ids=['MEAN', 'NONE', 'SEP-mask_cls_sep', 'CLS_POOLED'])
def test_a_count_between_batch_sizes_is_one_call_filled_with_one_token_inputs(fields, tiny_google_dir, encoders):
    """Eleven inputs of one length (12 word pieces) take one call of 12 (an allowed batch size), not
    8, 2 and 1; the filler input is one [PAD] token, so that every pooling strategy is defined on it,
    and its row is dropped: each vector is the input's own."""
    encoder = encoders.get(model_dir=str(tiny_google_dir), max_seq_len=None, **fields)
    features = encoder.featurize([['fox'] * 10] * 11, is_tokenized=True)
    vectors, counter = _run_counted(encoder, features)
    assert counter.shapes == [(12, 12)]
    assert counter.rows == [packed_rows(11 * 12 + 1, 12 * 12)]
    assert vectors.shape[0] == 11 and np.isfinite(vectors).all()
    alone = encoder.runner.run_tower(True, *pad_batch(features[:1], 12))
    for row in vectors:
        np.testing.assert_allclose(row, alone[0], atol=ATOL, rtol=0)


def test_the_filler_inputs_are_one_pad_token_each():
    features = [type('F', (), {'input_ids': [101, 7, 102], 'type_ids': [0, 0, 0]})()]
    ids, mask, types = pad_batch(features, 4, rows=3)
    assert ids.tolist() == [[101, 7, 102, 0], [0] * 4, [0] * 4]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0]]
    assert not types.any()


def _run_counted(encoder, features):
    """(encoder.run(features), the CountingRunner that recorded its TensorFlow calls)."""
    from test_invariants import CountingRunner

    runner = encoder.runner
    encoder.runner = counter = CountingRunner(runner)
    try:
        return encoder.run(features), counter
    finally:
        encoder.runner = runner
