"""A BERT forward pass, pooling and fine-tuned heads in float64 numpy, written from the paper's
equations and shared/reference/README.md: the oracle that engine and service tests compare the
TensorFlow graph with, independently of the reference data.

Dimension legend: B batch, T tokens, H hidden width, N heads, S head width (H / N), K labels.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

__all__ = ['numpy_bert', 'numpy_pool', 'numpy_head', 'inputs_from_tokens', 'special_positions']

_erf = np.vectorize(math.erf)


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def numpy_bert(weights: dict, ids: np.ndarray, mask: np.ndarray, types: np.ndarray, *, heads: int = 2,
               masked_keys: np.ndarray | None = None):
    """The BERT forward pass in float64.

    Args:
        weights: Google-named tensors, as from ``tiny_model.tiny_weights``.
        ids, mask, types: int [B, T]; ``mask`` is 1 on real tokens, 0 on padding.
        heads: N.
        masked_keys: bool [B, T], real tokens that no token may attend to ([CLS] and [SEP] under
            ``-mask_cls_sep``). They get BERT's -10000 attention bias; padding is left out
            entirely, so a row whose every real token is masked attends among its own tokens.

    Returns:
        (layers, pooled): the output of every transformer block, each float64 [B, T, H], and the
        pooler output tanh(W x[:, 0] + b) of the last block, [B, H].
    """
    w = {name: value.astype(np.float64) for name, value in weights.items() if not name.startswith('output_')}
    b, t = ids.shape
    h = w['bert/embeddings/word_embeddings'].shape[1]
    s = h // heads
    x = (w['bert/embeddings/word_embeddings'][ids] + w['bert/embeddings/token_type_embeddings'][types]
         + w['bert/embeddings/position_embeddings'][:t][None])  # [B, T, H]
    x = _layer_norm(x, w['bert/embeddings/LayerNorm/gamma'], w['bert/embeddings/LayerNorm/beta'])
    bias = np.where(mask == 0, -np.inf, 0.0)  # [B, T]
    if masked_keys is not None:
        bias = np.where((mask != 0) & masked_keys, -10000.0, bias)
    bias = bias[:, None, None, :]  # [B, 1, 1, T]

    def dense(y, scope):
        return y @ w[scope + '/kernel'] + w[scope + '/bias']

    def split_heads(y):  # [B, T, H] -> [B, N, T, S]
        return y.reshape(b, t, heads, s).transpose(0, 2, 1, 3)

    layers = []
    n = 0
    while f'bert/encoder/layer_{n}/output/dense/kernel' in w:
        p = f'bert/encoder/layer_{n}/'
        q, k, v = (split_heads(dense(x, p + 'attention/self/' + part)) for part in ('query', 'key', 'value'))
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


def special_positions(tokens) -> np.ndarray:
    """bool [B, T]: where ``[CLS]`` and ``[SEP]`` are, T being the longest token list."""
    out = np.zeros((len(tokens), max(len(row) for row in tokens)), bool)
    for row, row_tokens in enumerate(tokens):
        for col, token in enumerate(row_tokens):
            out[row, col] = token in ('[CLS]', '[SEP]')
    return out


def numpy_pool(case: dict, layers, pooled, mask: np.ndarray, tokens) -> np.ndarray:
    """Applies the pooling of ``case`` as shared/reference/README.md defines it.

    SEP_TOKEN is the last real token, the final [SEP], also under ``mask_cls_sep``.
    """
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
        m[special_positions(tokens)] = 0.0
    m = m[:, :, None]  # [B, T, 1]
    if strategy == 'NONE':
        return x * m
    mean = (x * m).sum(1) / (m.sum(1) + 1e-10)
    mx = (x - (1.0 - m) * 1e30).max(1)
    return {'REDUCE_MEAN': mean, 'REDUCE_MAX': mx,
            'REDUCE_MEAN_MAX': np.concatenate([mean, mx], axis=-1)}[strategy]


def numpy_head(strategy: str, weights: dict, pooled: np.ndarray) -> np.ndarray:
    """run_classifier's head on the pooler output [B, H]: CLASSIFICATION is the softmax of
    ``pooled · output_weightsᵀ + output_bias`` ([B, K]); REGRESSION the sigmoid of a 1-unit
    head ([B, 1])."""
    logits = pooled @ weights['output_weights'].astype(np.float64).T + weights['output_bias']  # [B, K]
    if strategy == 'CLASSIFICATION':
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)
    assert strategy == 'REGRESSION' and logits.shape[1] == 1, (strategy, logits.shape)
    return 1.0 / (1.0 + np.exp(-logits))


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
