"""Both model layouts load to the same network, tuned checkpoints override the base, and the
graph agrees with a plain numpy BERT, which proves it independently of the reference data.

Dimension legend: B batch, T tokens, H hidden width, N heads, S head width (H / N), K labels.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tiny_model import tiny_weights, write_tiny_model

HEADS = 2
LABELS = 3
LAYER_COUNT = 2
# float32 graph against a float64 oracle; tiny-model activations are O(1).
ATOL, RTOL = 1e-5, 1e-4

STRATEGY_CASES = [
    dict(pooling_strategy='REDUCE_MEAN', pooling_layer=(-2,)),
    dict(pooling_strategy='REDUCE_MEAN', pooling_layer=(-1,), mask_cls_sep=True),
    dict(pooling_strategy='REDUCE_MAX', pooling_layer=(-1,)),
    dict(pooling_strategy='REDUCE_MEAN_MAX', pooling_layer=(0, -1)),
    dict(pooling_strategy='CLS_TOKEN', pooling_layer=(-1,)),
    dict(pooling_strategy='SEP_TOKEN', pooling_layer=(-2,)),
    dict(pooling_strategy='CLS_POOLED'),
    dict(pooling_strategy='NONE', pooling_layer=(-1,)),
]


def _case_id(case: dict) -> str:
    return '-'.join(str(v) if not isinstance(v, tuple) else '_'.join(map(str, v)) for v in case.values())


# --- a numpy BERT, written from the paper's equations, as an oracle ---------------------------

_erf = np.vectorize(math.erf)


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def numpy_bert(weights: dict, ids: np.ndarray, mask: np.ndarray, types: np.ndarray):
    """The BERT forward pass in float64.

    Args:
        weights: Google-named tensors, as from ``tiny_weights``.
        ids, mask, types: int [B, T].

    Returns:
        (layers, pooled): the output of every transformer block, each float64 [B, T, H], and the
        pooler output tanh(W x[:, 0] + b) of the last block, [B, H].
    """
    w = {name: value.astype(np.float64) for name, value in weights.items()}
    b, t = ids.shape
    h = w['bert/embeddings/word_embeddings'].shape[1]
    s = h // HEADS
    x = (w['bert/embeddings/word_embeddings'][ids] + w['bert/embeddings/token_type_embeddings'][types]
         + w['bert/embeddings/position_embeddings'][:t][None])  # [B, T, H]
    x = _layer_norm(x, w['bert/embeddings/LayerNorm/gamma'], w['bert/embeddings/LayerNorm/beta'])
    bias = (1.0 - mask.astype(np.float64))[:, None, None, :] * -10000.0  # [B, 1, 1, T]

    def dense(y, scope):
        return y @ w[scope + '/kernel'] + w[scope + '/bias']

    def heads(y):  # [B, T, H] -> [B, N, T, S]
        return y.reshape(b, t, HEADS, s).transpose(0, 2, 1, 3)

    layers = []
    n = 0
    while f'bert/encoder/layer_{n}/output/dense/kernel' in w:
        p = f'bert/encoder/layer_{n}/'
        q, k, v = (heads(dense(x, p + 'attention/self/' + part)) for part in ('query', 'key', 'value'))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(s) + bias  # [B, N, T, T]
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, t, h)  # [B, T, H]
        x = _layer_norm(dense(ctx, p + 'attention/output/dense') + x,
                        w[p + 'attention/output/LayerNorm/gamma'], w[p + 'attention/output/LayerNorm/beta'])
        inner = dense(x, p + 'intermediate/dense')  # [B, T, I]
        inner = 0.5 * inner * (1.0 + _erf(inner / math.sqrt(2.0)))
        x = _layer_norm(dense(inner, p + 'output/dense') + x,
                        w[p + 'output/LayerNorm/gamma'], w[p + 'output/LayerNorm/beta'])
        layers.append(x)
        n += 1
    pooled = np.tanh(dense(layers[-1][:, 0], 'bert/pooler/dense'))  # [B, H]
    return layers, pooled


def numpy_pool(case: dict, layers, pooled, mask: np.ndarray, tokens) -> np.ndarray:
    """Applies the pooling of ``case`` as shared/reference/README.md defines it."""
    strategy = case['pooling_strategy']
    if strategy == 'CLS_POOLED':
        return pooled
    x = np.concatenate([layers[i] for i in case.get('pooling_layer', (-2,))], axis=-1)  # [B, T, H*L]
    if strategy == 'CLS_TOKEN':
        return x[:, 0]
    if strategy == 'SEP_TOKEN':
        return x[np.arange(len(x)), mask.sum(1) - 1]
    m = mask.astype(np.float64)
    if case.get('mask_cls_sep'):
        for row, row_tokens in enumerate(tokens):
            for col, token in enumerate(row_tokens):
                if token in ('[CLS]', '[SEP]'):
                    m[row, col] = 0.0
    m = m[:, :, None]  # [B, T, 1]
    if strategy == 'NONE':
        return x * m
    mean = (x * m).sum(1) / (m.sum(1) + 1e-10)
    mx = (x - (1.0 - m) * 1e30).max(1)
    return {'REDUCE_MEAN': mean, 'REDUCE_MAX': mx,
            'REDUCE_MEAN_MAX': np.concatenate([mean, mx], axis=-1)}[strategy]


def inputs_from_tokens(vocab_file: Path, tokens):
    """Builds [B, T] ids, mask and type ids from word pieces, independently of the engine's features."""
    vocab = {}
    with open(vocab_file, encoding='utf-8') as f:
        for index, line in enumerate(f):
            vocab.setdefault(line.rstrip('\n'), index)
    t = max(len(row) for row in tokens)
    ids = np.zeros((len(tokens), t), np.int64)
    mask = np.zeros((len(tokens), t), np.int64)
    types = np.zeros((len(tokens), t), np.int64)
    for row, row_tokens in enumerate(tokens):
        ids[row, :len(row_tokens)] = [vocab[token] for token in row_tokens]
        mask[row, :len(row_tokens)] = 1
        first_sep = row_tokens.index('[SEP]')
        types[row, first_sep + 1:len(row_tokens)] = 1
    return ids, mask, types


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def tiny_hf_prefixed_dir(tmp_path_factory) -> Path:
    """The seed-0 tiny model as BertForSequenceClassification saves it: every key under ``bert.``."""
    return write_tiny_model(tmp_path_factory.mktemp('tiny-hf-prefixed'), 'hf', prefix='bert.')


@pytest.fixture(scope='module')
def tuned_google_dir(tmp_path_factory) -> Path:
    """A fine-tuned checkpoint: different weights (seed 1) and a 3-label classifier head."""
    return write_tiny_model(tmp_path_factory.mktemp('tuned-google'), 'google', seed=1, with_head=LABELS)


@pytest.fixture(scope='module')
def tuned_hf_dir(tmp_path_factory) -> Path:
    """The same fine-tuned weights and head as ``tuned_google_dir``, in the Hugging Face layout."""
    return write_tiny_model(tmp_path_factory.mktemp('tuned-hf'), 'hf', seed=1, with_head=LABELS, prefix='bert.')


@pytest.fixture(scope='module')
def base_weights() -> dict:
    return tiny_weights(0)


@pytest.fixture(scope='module')
def tuned_weights() -> dict:
    return tiny_weights(1, with_head=LABELS)


# --- layouts -------------------------------------------------------------------------------------


@pytest.mark.parametrize('case', STRATEGY_CASES, ids=_case_id)
def test_layouts_give_identical_vectors(case, tiny_hf_dir, tiny_hf_prefixed_dir, tiny_google_dir,
                                        tiny_texts, encoders):
    results = {}
    for name, model_dir in (('hf', tiny_hf_dir), ('hf-prefixed', tiny_hf_prefixed_dir),
                            ('google', tiny_google_dir)):
        encoder = encoders.get(model_dir=str(model_dir), **case)
        results[name] = encoder.encode(tiny_texts)

    vectors, tokens = results['hf']
    assert encoders.get(model_dir=str(tiny_google_dir), **case).graph.files.layout == 'google'
    assert encoders.get(model_dir=str(tiny_hf_dir), **case).graph.files.layout == 'hf'
    for name in ('hf-prefixed', 'google'):
        other_vectors, other_tokens = results[name]
        assert other_tokens == tokens
        np.testing.assert_allclose(other_vectors, vectors, atol=1e-6, rtol=0, err_msg=name)


@pytest.mark.parametrize('case', STRATEGY_CASES, ids=_case_id)
def test_graph_equals_numpy_bert(case, tiny_google_dir, base_weights, tiny_texts, encoders):
    encoder = encoders.get(model_dir=str(tiny_google_dir), **case)
    vectors, tokens = encoder.encode(tiny_texts)

    ids, mask, types = inputs_from_tokens(tiny_google_dir / 'vocab.txt', tokens)
    layers, pooled = numpy_bert(base_weights, ids, mask, types)
    expected = numpy_pool(case, layers, pooled, mask, tokens)

    if case['pooling_strategy'] == 'NONE':
        assert vectors.shape == (len(tiny_texts), 25, 32)  # T is max_seq_len (25 by default)
        assert not vectors[:, expected.shape[1]:].any()
        vectors = vectors[:, :expected.shape[1]]
    np.testing.assert_allclose(vectors, expected, atol=ATOL, rtol=RTOL)


# --- fine-tuned checkpoints ----------------------------------------------------------------------


def test_tuned_checkpoint_overrides_base_weights(tiny_google_dir, tuned_google_dir, tiny_texts, encoders):
    base, _ = encoders.get(model_dir=str(tiny_google_dir)).encode(tiny_texts)
    tuned, _ = encoders.get(model_dir=str(tiny_google_dir), tuned_model_dir=str(tuned_google_dir)).encode(tiny_texts)
    direct, _ = encoders.get(model_dir=str(tuned_google_dir)).encode(tiny_texts)

    assert not np.allclose(tuned, base, atol=1e-3)
    np.testing.assert_allclose(tuned, direct, atol=1e-6, rtol=0)


@pytest.mark.parametrize('strategy', ['CLASSIFICATION', 'REGRESSION'])
def test_head_outputs_equal_numpy(strategy, tiny_google_dir, tuned_google_dir, tuned_weights, tiny_texts,
                                  encoders):
    encoder = encoders.get(model_dir=str(tiny_google_dir), tuned_model_dir=str(tuned_google_dir),
                           pooling_strategy=strategy, num_labels=LABELS)
    vectors, tokens = encoder.encode(tiny_texts)

    ids, mask, types = inputs_from_tokens(tiny_google_dir / 'vocab.txt', tokens)
    _, pooled = numpy_bert(tuned_weights, ids, mask, types)
    logits = pooled @ tuned_weights['output_weights'].T.astype(np.float64) + tuned_weights['output_bias']  # [B, K]
    assert vectors.shape == (len(tiny_texts), LABELS)
    if strategy == 'CLASSIFICATION':
        expected = np.exp(logits - logits.max(1, keepdims=True))
        expected /= expected.sum(1, keepdims=True)
        np.testing.assert_allclose(vectors.sum(1), 1.0, atol=1e-6)
    else:
        expected = logits
    np.testing.assert_allclose(vectors, expected, atol=ATOL, rtol=RTOL)


def test_hf_tuned_head_equals_google_tuned_head(tiny_hf_dir, tiny_google_dir, tuned_hf_dir, tuned_google_dir,
                                                tiny_texts, encoders):
    fields = dict(pooling_strategy='CLASSIFICATION', num_labels=LABELS)
    google, _ = encoders.get(model_dir=str(tiny_google_dir), tuned_model_dir=str(tuned_google_dir),
                             **fields).encode(tiny_texts)
    hf, _ = encoders.get(model_dir=str(tiny_hf_dir), tuned_model_dir=str(tuned_hf_dir), **fields).encode(tiny_texts)

    np.testing.assert_allclose(hf, google, atol=1e-6, rtol=0)
