"""Fine-tuned checkpoints as google-research/bert's run_classifier.py leaves them, read as the
original bert-as-service reads them: the config and vocab from -model_dir, every tensor from
-tuned_model_dir/-ckpt_name alone; and the CLASSIFICATION and REGRESSION heads on top.

Dimension legend: B batch, H hidden width, K labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bert_serving.server.engine import graph
from bert_serving.server.config import EngineConfig
from bert_serving.server.errors import ModelError

from numpy_bert import inputs_from_tokens, numpy_bert, numpy_head, numpy_pool
from tiny_model import tiny_weights, write_finetuned_checkpoint, write_tiny_model

LABELS = 3
CKPT = 'model.ckpt-343'
# float32 graph against a float64 oracle; tiny-model activations are O(1).
ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture(scope='module')
def classifier_weights() -> dict:
    """Fine-tuned weights (seed 1, unlike the seed-0 base) with a K-label head."""
    return tiny_weights(1, with_head=LABELS)


@pytest.fixture(scope='module')
def regressor_weights() -> dict:
    """Fine-tuned weights (seed 2) with run_classifier's 1-unit regression head."""
    return tiny_weights(2, with_head=1)


@pytest.fixture(scope='module')
def classifier_dir(tmp_path_factory, classifier_weights) -> Path:
    """A run_classifier output dir: only model.ckpt-343 (with Adam slots and global_step)."""
    return write_finetuned_checkpoint(tmp_path_factory.mktemp('mrpc_output'), classifier_weights, ckpt_name=CKPT)


@pytest.fixture(scope='module')
def regressor_dir(tmp_path_factory, regressor_weights) -> Path:
    return write_finetuned_checkpoint(tmp_path_factory.mktemp('sts_output'), regressor_weights, ckpt_name=CKPT)


@pytest.fixture(scope='module')
def tuned_google_dir(tmp_path_factory) -> Path:
    """The classifier's weights and head as a whole Google model directory (bert_model.ckpt)."""
    return write_tiny_model(tmp_path_factory.mktemp('tuned-google'), 'google', seed=1, with_head=LABELS)


@pytest.fixture(scope='module')
def tuned_hf_dir(tmp_path_factory) -> Path:
    """The same weights and head as ``tuned_google_dir``, as BertForSequenceClassification saves them."""
    return write_tiny_model(tmp_path_factory.mktemp('tuned-hf'), 'hf', seed=1, with_head=LABELS, prefix='bert.')


def _expected(strategy: str, weights: dict, vocab: Path, tokens) -> np.ndarray:
    ids, mask, types = inputs_from_tokens(vocab, tokens)
    layers, pooled = numpy_bert(weights, ids, mask, types)
    if strategy in ('CLASSIFICATION', 'REGRESSION'):
        return numpy_head(strategy, weights, pooled)
    return numpy_pool({'pooling_strategy': strategy}, layers, pooled, mask, tokens)


# --- where the tensors come from ------------------------------------------------------------------


def test_readme_command_reads_the_tuned_checkpoint_only(tiny_google_dir, classifier_dir, classifier_weights,
                                                        tiny_texts, encoders):
    # -model_dir holds bert_model.ckpt but no model.ckpt-343: the original's README command.
    assert not list(tiny_google_dir.glob(CKPT + '*'))
    encoder = encoders.get(model_dir=str(tiny_google_dir), tuned_model_dir=str(classifier_dir), ckpt_name=CKPT)
    tuned, tokens = encoder.encode(tiny_texts)
    base, _ = encoders.get(model_dir=str(tiny_google_dir)).encode(tiny_texts)

    assert encoder.graph.files.weights == str(classifier_dir / CKPT)
    assert encoder.graph.files.config_path == str(tiny_google_dir / 'bert_config.json')
    np.testing.assert_allclose(tuned, _expected('REDUCE_MEAN', classifier_weights, tiny_google_dir / 'vocab.txt',
                                                tokens), atol=ATOL, rtol=RTOL)
    assert not np.allclose(tuned, base, atol=1e-3)


def test_tuned_dir_weights_equal_the_same_model_loaded_directly(tiny_google_dir, tuned_google_dir, tiny_texts,
                                                                encoders):
    tuned, _ = encoders.get(model_dir=str(tiny_google_dir), tuned_model_dir=str(tuned_google_dir)).encode(tiny_texts)
    direct, _ = encoders.get(model_dir=str(tuned_google_dir)).encode(tiny_texts)

    np.testing.assert_allclose(tuned, direct, atol=1e-6, rtol=0)


def test_tuned_checkpoint_bytes_are_part_of_the_graph_key(tiny_google_dir, classifier_weights, regressor_weights,
                                                          tmp_path):
    # Two fine-tuning runs with the same file names, weights differing only in the checkpoint.
    first = write_finetuned_checkpoint(tmp_path / 'run1', classifier_weights, ckpt_name=CKPT)
    second = write_finetuned_checkpoint(tmp_path / 'run2', {k: v for k, v in regressor_weights.items()
                                                            if not k.startswith('output_')}, ckpt_name=CKPT)
    cache = tmp_path / 'graphs'

    def prepare(tuned: Path):
        return graph.prepare_graph(EngineConfig(model_dir=str(tiny_google_dir), tuned_model_dir=str(tuned),
                                                ckpt_name=CKPT, graph_tmp_dir=str(cache)))

    one, two = prepare(first), prepare(second)
    assert not two.from_cache and two.path != one.path
    assert prepare(first).path == one.path


def test_tuned_dir_without_the_named_checkpoint(tiny_google_dir, classifier_dir):
    with pytest.raises(ModelError) as info:
        graph.prepare_graph(EngineConfig(model_dir=str(tiny_google_dir), tuned_model_dir=str(classifier_dir),
                                         ckpt_name='model.ckpt-1000'))
    message = str(info.value)
    assert str(classifier_dir / 'model.ckpt-1000') + '.index' in message and '-ckpt_name' in message


def test_tuned_dir_needs_the_config_in_model_dir(classifier_dir, tmp_path):
    bare = tmp_path / 'bare'
    bare.mkdir()
    with pytest.raises(ModelError) as info:
        graph.prepare_graph(EngineConfig(model_dir=str(bare), tuned_model_dir=str(classifier_dir), ckpt_name=CKPT))
    message = str(info.value)
    assert str(bare / 'bert_config.json') in message and '-model_dir' in message


# --- heads ----------------------------------------------------------------------------------------


def test_classification_is_the_softmax_of_the_head(tiny_google_dir, classifier_dir, classifier_weights, tiny_texts,
                                                   encoders):
    encoder = encoders.get(model_dir=str(tiny_google_dir), tuned_model_dir=str(classifier_dir), ckpt_name=CKPT,
                           pooling_strategy='CLASSIFICATION', num_labels=LABELS)
    probs, tokens = encoder.encode(tiny_texts)

    assert probs.shape == (len(tiny_texts), LABELS) and encoder.output_dim == LABELS
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probs, _expected('CLASSIFICATION', classifier_weights, tiny_google_dir / 'vocab.txt',
                                                tokens), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize('num_labels', [1, LABELS])
def test_regression_is_the_sigmoid_of_a_one_unit_head(num_labels, tiny_google_dir, regressor_dir, regressor_weights,
                                                      tiny_texts, encoders):
    encoder = encoders.get(model_dir=str(tiny_google_dir), tuned_model_dir=str(regressor_dir), ckpt_name=CKPT,
                           pooling_strategy='REGRESSION', num_labels=num_labels)
    scores, tokens = encoder.encode(tiny_texts)

    assert scores.shape == (len(tiny_texts), 1) and encoder.output_dim == 1
    assert ((scores > 0) & (scores < 1)).all()
    np.testing.assert_allclose(scores, _expected('REGRESSION', regressor_weights, tiny_google_dir / 'vocab.txt',
                                                 tokens), atol=ATOL, rtol=RTOL)


def test_hf_tuned_head_equals_google_tuned_head(tiny_hf_dir, tiny_google_dir, tuned_hf_dir, tuned_google_dir,
                                                tiny_texts, encoders):
    fields = dict(pooling_strategy='CLASSIFICATION', num_labels=LABELS)
    google, _ = encoders.get(model_dir=str(tiny_google_dir), tuned_model_dir=str(tuned_google_dir),
                             **fields).encode(tiny_texts)
    hf, _ = encoders.get(model_dir=str(tiny_hf_dir), tuned_model_dir=str(tuned_hf_dir), **fields).encode(tiny_texts)

    np.testing.assert_allclose(hf, google, atol=1e-6, rtol=0)


# --- head errors ----------------------------------------------------------------------------------


def _head_error(**fields) -> str:
    with pytest.raises(ModelError) as info:
        graph.prepare_graph(EngineConfig(**fields))
    return str(info.value)


@pytest.mark.parametrize('strategy', ['CLASSIFICATION', 'REGRESSION'])
def test_a_checkpoint_without_a_head_is_an_error(strategy, tiny_google_dir, classifier_weights, tmp_path):
    headless = write_finetuned_checkpoint(tmp_path / 'headless', {k: v for k, v in classifier_weights.items()
                                                                  if not k.startswith('output_')}, ckpt_name=CKPT)
    message = _head_error(model_dir=str(tiny_google_dir), tuned_model_dir=str(headless), ckpt_name=CKPT,
                          pooling_strategy=strategy)
    for fragment in ("'output_weights' is missing", str(headless / CKPT), '-tuned_model_dir', '-ckpt_name'):
        assert fragment in message, f'{fragment!r} not in {message!r}'


def test_regression_on_a_classifier_head_names_the_shapes(tiny_google_dir, classifier_dir):
    message = _head_error(model_dir=str(tiny_google_dir), tuned_model_dir=str(classifier_dir), ckpt_name=CKPT,
                          pooling_strategy='REGRESSION', num_labels=LABELS)
    for fragment in ('output_weights', f'({LABELS}, 32)', '(1, 32)', 'REGRESSION', '1-unit'):
        assert fragment in message, f'{fragment!r} not in {message!r}'

