"""How requests flow through ventilator, workers and sink: splitting, order, priority, token-level
output, tokens for clients, prefetching.

The pipeline runs the fake engine (D = FAKE_WIDTH); what depends on the model itself
(max_position_embeddings, -fixed_embed_length) runs the tiny model (D = 32).

Legend: B inputs in a request, T tokens, D the width.
"""
from __future__ import annotations

import numpy as np
import pytest

from bert_serving.server.config import EngineConfig
from bert_serving.server.engine.encoder import Encoder
from bert_serving.server.engine.fake import FAKE_WIDTH

from service_support import FAKE, Expected, fake_expected, sentence

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NONE_FLAGS = ['-pooling_strategy', 'NONE', '-max_seq_len', 'NONE']
TINY_MAX_POSITION = 64  # max_position_embeddings of tests/tiny_model.py
TINY_WIDTH = 32


def _mixed_lengths(n: int, start: int = 0) -> list:
    """n distinct inputs whose lengths go up and down, so length bucketing reorders them."""
    return [sentence(start + i) for i in range(n)]


@pytest.fixture(scope='module')
def none_expected(tiny_hf_dir, graph_cache_dir):
    """Expected token-level output of the tiny model: one input alone gives float32 [t, 32], t its
    own length."""
    encoder = Encoder(EngineConfig(model_dir=str(tiny_hf_dir), graph_tmp_dir=str(graph_cache_dir),
                                   pooling_strategy='NONE', max_seq_len=None))
    yield Expected(encoder)
    encoder.close()


@pytest.fixture(scope='module')
def fake_none_expected():
    """The same for the fake engine: float32 [t, FAKE_WIDTH]."""
    return fake_expected(pooling_strategy='NONE', max_seq_len=None)


@pytest.fixture(scope='module')
def none_server(launch):
    """Token-level output with the request's longest input as T; requests split across 2 workers."""
    with launch(FAKE, NONE_FLAGS + ['-num_worker', '2', '-max_batch_size', '4']) as running:
        yield running


@pytest.fixture(scope='module')
def fixed_server(launch, tiny_hf_dir):
    """The tiny model: token-level output padded to max_position_embeddings; no prefetching."""
    with launch(tiny_hf_dir, NONE_FLAGS + ['-fixed_embed_length', '-prefetch_size', '0', '-num_worker', '1',
                                           '-max_batch_size', '4']) as running:
        yield running


# -- on the shared server: 2 workers, batches of at most 4 rows -------------------------------------

def test_request_larger_than_max_batch_size_comes_back_in_order(shared_server, fake_vectors):
    texts = _mixed_lengths(37)  # 10 pieces of at most 4 rows, bucketed by length
    with shared_server.client() as bc:
        vectors = bc.encode(texts)
    assert vectors.shape == (37, FAKE_WIDTH)
    np.testing.assert_allclose(vectors, fake_vectors.many(texts), atol=1e-5)


def test_tokens_come_back_in_row_order(shared_server, fake_vectors):
    texts = _mixed_lengths(13, start=100) + ['', 'how old are you? ||| what is your age?']
    with shared_server.client() as bc:
        vectors, tokens = bc.encode(texts, show_tokens=True)
        plain = bc.encode(texts)
    assert tokens == fake_vectors.tokens(texts)
    assert tokens[-2] == ['[CLS]', '[SEP]'] and tokens[-1].count('[SEP]') == 2
    np.testing.assert_allclose(vectors, fake_vectors.many(texts), atol=1e-5)
    np.testing.assert_allclose(plain, vectors, atol=1e-6)


def test_pre_tokenized_request_is_split_and_ordered(shared_server, fake_vectors):
    texts = _mixed_lengths(11, start=200)
    tokenized = [t.split() for t in texts]
    with shared_server.client() as bc:
        vectors, tokens = bc.encode(tokenized, is_tokenized=True, show_tokens=True)
    expected = fake_vectors.encoder.encode(tokenized, is_tokenized=True)
    assert tokens == expected[1]
    np.testing.assert_allclose(vectors, expected[0], atol=1e-5)


def test_small_request_overtakes_a_queued_big_one(shared_server, fake_vectors):
    """With priority, a request of at most priority_batch_size (16) inputs goes ahead of the
    pieces of a big request queued before it; without priority it would come back last."""
    big = [f'{i} the quick brown fox' for i in range(1600)]  # 400 pieces of 4
    small = ['hello world']
    with shared_server.client() as bc:
        bc.encode(big, blocking=False)
        big_id = bc.request_id
        bc.encode(small, blocking=False)
        arrived = list(bc.fetch())  # in the order the replies arrive
    assert [r.id for r in arrived] == [big_id + 1, big_id], 'the small request did not overtake the big one'
    np.testing.assert_allclose(arrived[0].embedding, fake_vectors.many(small), atol=1e-5)
    sample = [0, 1, 2, 799, 1598, 1599]
    np.testing.assert_allclose(arrived[1].embedding[sample], fake_vectors.many([big[i] for i in sample]),
                               atol=1e-5)


def test_non_blocking_requests_are_fetched_in_sending_order(shared_server, fake_vectors):
    chunks = [_mixed_lengths(n, start=300 + 20 * k) for k, n in enumerate([9, 1, 17, 4, 30])]
    with shared_server.client() as bc:
        for chunk in chunks:
            bc.encode(chunk, blocking=False)
        results = bc.fetch_all(sort=True)
        for chunk in chunks:
            bc.encode(chunk, blocking=False)
        concat = bc.fetch_all(concat=True)
    for chunk, got in zip(chunks, results):
        np.testing.assert_allclose(got, fake_vectors.many(chunk), atol=1e-5)
    np.testing.assert_allclose(concat, np.concatenate(results), atol=1e-6)


# -- token-level output --------------------------------------------------------------------------

def _check_token_level(vectors, texts, none_expected, t_expected, width=TINY_WIDTH):
    assert vectors.shape == (len(texts), t_expected, width)
    for row, text in enumerate(texts):
        alone = none_expected.one(text)  # [t, D]
        t = alone.shape[0]
        np.testing.assert_allclose(vectors[row, :t], alone, atol=1e-5, err_msg=f'row {row}')
        assert not vectors[row, t:].any(), f'row {row}: padding positions are not zero'


def test_none_pooling_gives_the_longest_input_of_the_request(none_server, fake_none_expected):
    texts = _mixed_lengths(14, start=400)  # 4 pieces over 2 workers, each piece its own length
    longest = max(len(tokens) for tokens in fake_none_expected.tokens(texts))
    with none_server.client(check_length=False) as bc:
        vectors = bc.encode(texts)
        short = bc.encode(['a', 'b c'])
        status = bc.server_status
    _check_token_level(vectors, texts, fake_none_expected, longest, FAKE_WIDTH)
    # T follows the request, not the server
    _check_token_level(short, ['a', 'b c'], fake_none_expected, 4, FAKE_WIDTH)
    assert set(status['batches_per_worker']) == {'0', '1'}, 'the request was not split across both workers'


def test_none_pooling_caps_at_max_position_embeddings(launch, tiny_hf_dir):
    """A model limit: with -max_seq_len NONE, an input longer than max_position_embeddings is cut."""
    long_text = ' '.join(['word'] * 100)
    with launch(tiny_hf_dir, NONE_FLAGS + ['-num_worker', '1']) as running:
        with running.client(check_length=False) as bc:
            vectors = bc.encode([long_text, 'short'])
    assert vectors.shape == (2, TINY_MAX_POSITION, TINY_WIDTH)


def test_fixed_embed_length_pads_to_max_position_embeddings(fixed_server, none_expected):
    texts = _mixed_lengths(9, start=500)
    with fixed_server.client(check_length=False) as bc:
        vectors = bc.encode(texts)
        one = bc.encode(['a'])
    _check_token_level(vectors, texts, none_expected, TINY_MAX_POSITION)
    _check_token_level(one, ['a'], none_expected, TINY_MAX_POSITION)


def test_prefetch_size_zero_serves_back_to_back_requests(fixed_server, none_expected):
    chunks = [_mixed_lengths(n, start=600 + 20 * k) for k, n in enumerate([5, 1, 8, 3, 6, 2])]
    with fixed_server.client(check_length=False) as bc:
        for chunk in chunks:
            bc.encode(chunk, blocking=False)
        results = bc.fetch_all()
        config = bc.server_config
    assert config['prefetch_size'] == 0
    for chunk, got in zip(chunks, results):
        _check_token_level(got, chunk, none_expected, TINY_MAX_POSITION)
