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


def test_one_sentence_requests_of_mixed_lengths_go_in_one_call(tiny_google_dir, encoders):
    """Twelve inputs of 8 to 60 word pieces, as many small clients send them: one model call, where
    padding every input to 60 in the dense layers made splitting them pay."""
    encoder = encoders.get(model_dir=str(tiny_google_dir), max_seq_len=None)
    lengths = np.linspace(8, 60, 12).astype(int)
    features = encoder.featurize([['fox'] * (n - 2) for n in lengths], is_tokenized=True)
    runner, shapes = encoder.runner, []

    def counting(ids, mask, types):
        shapes.append(ids.shape)
        return runner(ids, mask, types)

    encoder.runner = counting
    try:
        vectors = encoder.run(features)
    finally:
        encoder.runner = runner
    assert shapes == [(12, 60)]
    alone = np.concatenate([encoder.run([f]) for f in features])
    np.testing.assert_allclose(vectors, alone, atol=ATOL, rtol=0)


@pytest.mark.parametrize('fields', [dict(pooling_strategy='NONE'), dict(pooling_strategy='CLS_POOLED'),
                                    dict(pooling_strategy='REDUCE_MEAN_MAX', pooling_layer=(-1, 0)),
                                    dict(pooling_strategy='SEP_TOKEN', mask_cls_sep=True)],
                         ids=['NONE', 'CLS_POOLED', 'MEAN_MAX-2-layers', 'SEP-mask_cls_sep'])
def test_every_strategy_reads_the_packed_rows_back_in_place(fields, tiny_google_dir, encoders):
    """The pooled layers return from rows to the [B, T] layout: zero past each input for NONE."""
    encoder = encoders.get(model_dir=str(tiny_google_dir), max_seq_len=None, **fields)
    features = encoder.featurize(['a', 'the quick brown fox jumps over the lazy dog', 'hello ||| world'])
    ids, mask, types = pad_batch(features, 40)
    batch = encoder.runner.run_tower(False, ids, mask, types)
    for row, feature in enumerate(features):
        n = len(feature.input_ids)
        alone = encoder.runner.run_tower(True, *pad_batch([feature], n))[0]
        got = batch[row][:n] if encoder.is_token_level else batch[row]
        np.testing.assert_allclose(got, alone, atol=ATOL, rtol=0)
        if encoder.is_token_level:
            assert not batch[row][n:].any()
