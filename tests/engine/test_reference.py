"""The bundled all-MiniLM-L6-v2 reproduces the reference encodings of shared/reference.

The reference was computed independently (Hugging Face transformers, float64 pooling); see
shared/reference/README.md for the semantics each config pins down.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ATOL, RTOL = 1e-4, 1e-3

CONFIG_NAMES = [
    'default', 'mean_last_nolimit', 'max', 'mean_max', 'cls', 'sep', 'cls_pooled', 'concat4',
    'first_layer', 'mask_cls_sep', 'mask_cls_sep_max_128', 'mask_cls_sep_cls', 'mask_cls_sep_none',
    'none', 'none_nolimit', 'mean_128',
]


def _engine_fields(ref_config: dict) -> dict:
    return {
        'pooling_layer': tuple(ref_config['pooling_layer']),
        'pooling_strategy': ref_config['pooling_strategy'],
        'max_seq_len': ref_config['max_seq_len'],
        'mask_cls_sep': ref_config['mask_cls_sep'],
    }


def _expected_tokens(reference, max_seq_len):
    """The token lists for max_seq_len 25 or 128; None means no limit below the longest input."""
    if max_seq_len == 25:
        return reference.tokens_default
    if max_seq_len == 128:
        return reference.tokens_128
    assert max_seq_len is None
    return None


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_every_reference_config_is_covered(reference):
    assert sorted(reference.configs) == sorted(CONFIG_NAMES)


# Runs before the parametrized configs, so that "default" reuses its open encoder.
def test_pretokenized_inputs_match_reference(reference, encoders):
    encoder = encoders.get(**_engine_fields(reference.configs['default']))

    vectors, tokens = encoder.encode(reference.tokenized, is_tokenized=True)

    assert tokens == reference.tokens_tokenized_default
    np.testing.assert_allclose(vectors, reference.arrays['tokenized_default'], atol=ATOL, rtol=RTOL)


# layer_shards 2 is what a CPU worker with two or more cores runs (each block split into two groups
# of heads and feed-forward units): every config is checked through it. 1 (whole blocks) is the graph
# of the in-process Encoder and of GPU workers. The blocks are the same whatever the pooling, and
# tests/engine/test_layouts.py checks both against the numpy oracle for every strategy on the tiny
# model, so here whole blocks run one config of each kind of head: a mean over one layer, a concat of
# four layers, the pooler, and NONE with [CLS]/[SEP] masked. Each distinct graph of the real model
# costs about 5 s of CPU to build on the 2-core machine.
WHOLE_CONFIGS = ('default', 'concat4', 'cls_pooled', 'mask_cls_sep_none')
SHARD_CASES = [pytest.param(name, 2, id=f'{name}-split2') for name in CONFIG_NAMES] + \
    [pytest.param(name, 1, id=f'{name}-whole') for name in WHOLE_CONFIGS]


@pytest.mark.parametrize('name, layer_shards', SHARD_CASES)
def test_config_matches_reference(name, layer_shards, reference, encoders):
    ref_config = reference.configs[name]
    encoder = encoders.get(**_engine_fields(ref_config), layer_shards=layer_shards)

    vectors, tokens = encoder.encode(reference.texts)

    assert vectors.dtype == np.float32
    assert vectors.shape == tuple(ref_config['shape'])
    np.testing.assert_allclose(vectors, reference.arrays[name], atol=ATOL, rtol=RTOL)

    expected = _expected_tokens(reference, ref_config['max_seq_len'])
    if expected is not None:
        assert tokens == expected
    else:
        # No limit: tokens_128 holds every input shorter than 128 whole, the rest cut at 127 + [SEP].
        for got, cut in zip(tokens, reference.tokens_128):
            if len(cut) < 128:
                assert got == cut
            else:
                assert got[:127] == cut[:127] and got[-1] == '[SEP]' and len(got) > 128

    if ref_config['pooling_strategy'] == 'NONE':
        assert vectors.shape[1] == (ref_config['max_seq_len'] or max(len(t) for t in tokens))
        for row, row_tokens in zip(vectors, tokens):
            assert not row[len(row_tokens):].any(), 'padding rows of NONE pooling must be exactly zero'


# XLA compiles the graph of a CPU worker (split blocks); whole blocks are checked above without XLA.
@pytest.mark.parametrize('layer_shards', [2], ids=['split2'])
def test_xla_graph_matches_reference(layer_shards, reference, encoders):
    encoder = encoders.get(**_engine_fields(reference.configs['default']), xla=True, layer_shards=layer_shards)

    vectors, _ = encoder.encode(reference.texts)

    np.testing.assert_allclose(vectors, reference.arrays['default'], atol=ATOL, rtol=RTOL)


# float16 on a GPU (whole blocks) and reduced precision on a CPU worker (split), with two heads.
@pytest.mark.parametrize('name, layer_shards', [('default', 2), ('mask_cls_sep_cls', 1)],
                         ids=['default-split2', 'mask_cls_sep_cls-whole'])
def test_fp16_graph_returns_float16_close_to_reference(name, layer_shards, reference, encoders):
    encoder = encoders.get(**_engine_fields(reference.configs[name]), fp16=True, layer_shards=layer_shards)

    vectors, _ = encoder.encode(reference.texts)

    assert vectors.dtype == np.float16
    assert vectors.shape == reference.arrays[name].shape
    cosine = _cosine_rows(vectors, reference.arrays[name])
    assert cosine.min() >= 0.999, f'row {cosine.argmin()} has cosine {cosine.min():.6f}'


# -bf16 is a CPU flag: CPU workers run split blocks.
@pytest.mark.parametrize('layer_shards', [2], ids=['split2'])
def test_bf16_graph_is_close_to_reference(layer_shards, reference, encoders):
    encoder = encoders.get(**_engine_fields(reference.configs['default']), bf16=True, layer_shards=layer_shards)

    vectors, _ = encoder.encode(reference.texts)

    assert vectors.dtype == np.float32
    cosine = _cosine_rows(vectors, reference.arrays['default'])
    assert cosine.min() >= 0.999, f'row {cosine.argmin()} has cosine {cosine.min():.6f}'


def test_mean_last_nolimit_equals_sentence_transformers(reference, encoders, bundled_model_dir, monkeypatch):
    """Our mean of the last layer, L2-normalised, is what sentence-transformers computes
    for the same checkpoint (sentence-transformers comes with the bench extra)."""
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(bundled_model_dir), device='cpu')
    encoder = encoders.get(**_engine_fields(reference.configs['mean_last_nolimit']))
    singles = [i for i, text in enumerate(reference.texts) if ' ||| ' not in text]
    expected = model.encode([reference.texts[i] for i in singles], normalize_embeddings=True)
    vectors, _ = encoder.encode([reference.texts[i] for i in singles])
    np.testing.assert_allclose(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), expected, atol=1e-5)
