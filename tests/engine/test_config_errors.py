"""A bad model directory or flag gives one of the project's errors, naming what to check or change,
before any TensorFlow work starts, and never a raw TensorFlow or Python traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.numpy import load_file, save_file

from bert_serving.client.errors import BertServingError
from bert_serving.server.config import EngineConfig
from bert_serving.server.engine.encoder import Encoder
from bert_serving.server.errors import ConfigError, ModelError

from tiny_model import write_tiny_model


def start_fails(error_type, *fragments, **fields):
    """Starts an Encoder that must fail with ``error_type``, whose message holds every fragment."""
    with pytest.raises(error_type) as info:
        Encoder(EngineConfig(**fields)).close()
    error = info.value
    assert isinstance(error, BertServingError), f'{type(error).__name__} is not a BertServingError'
    message = str(error)
    for fragment in fragments:
        assert str(fragment) in message, f'{fragment!r} not in {message!r}'
    return message


@pytest.fixture
def hf_copy(tiny_hf_dir, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_hf_dir, tmp_path / 'hf'))


@pytest.fixture
def google_copy(tiny_google_dir, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_google_dir, tmp_path / 'google'))


# --- the model directory --------------------------------------------------------------------


def test_missing_model_dir(tmp_path):
    missing = tmp_path / 'no-such-model'
    start_fails(ModelError, missing, 'not a directory', 'config.json', 'model.safetensors', 'bert_config.json',
                model_dir=str(missing))


def test_dir_without_a_model_lists_the_expected_files(tmp_path):
    (tmp_path / 'README.md').write_text('not a model')
    start_fails(ModelError, tmp_path, 'no BERT model', 'README.md', 'bert_config.json', 'bert_model.ckpt.index',
                'config.json', 'model.safetensors', model_dir=str(tmp_path))


def test_google_checkpoint_without_data_file(google_copy):
    for data in google_copy.glob('bert_model.ckpt.data-*'):
        data.unlink()
    start_fails(ModelError, 'bert_model.ckpt.data-00000-of-00001', 'does not exist', model_dir=str(google_copy))


def test_google_checkpoint_with_a_different_name_points_at_ckpt_name(google_copy):
    start_fails(ModelError, 'model.ckpt-1000.index', '-ckpt_name', model_dir=str(google_copy),
                ckpt_name='model.ckpt-1000')


def test_unreadable_google_checkpoint(google_copy):
    (google_copy / 'bert_model.ckpt.index').write_bytes(b'not an sstable' * 8)
    start_fails(ModelError, 'bert_model.ckpt.index', 'cannot be read', model_dir=str(google_copy))


@pytest.mark.parametrize('token', ['[CLS]', '[PAD]'])
def test_a_vocab_without_a_special_token_names_it(hf_copy, tmp_path, token):
    vocab = hf_copy / 'vocab.txt'
    vocab.write_text(''.join(line for line in vocab.read_text(encoding='utf-8').splitlines(keepends=True)
                             if line.strip() != token), encoding='utf-8')
    start_fails(ModelError, 'vocab.txt', token, 'special tokens', model_dir=str(hf_copy), graph_tmp_dir=str(tmp_path))


def test_missing_vocab(hf_copy):
    (hf_copy / 'vocab.txt').unlink()
    start_fails(ModelError, hf_copy / 'vocab.txt', 'does not exist', model_dir=str(hf_copy))


def test_corrupt_config_json_names_the_file(hf_copy):
    (hf_copy / 'config.json').write_text('{"hidden_size": 32,, oops')
    start_fails(ModelError, hf_copy / 'config.json', 'not valid JSON', model_dir=str(hf_copy))


def test_corrupt_safetensors_names_the_file(hf_copy):
    (hf_copy / 'model.safetensors').write_bytes(b'\x00' * 32)
    start_fails(ModelError, hf_copy / 'model.safetensors', 'safetensors', model_dir=str(hf_copy))


def test_safetensors_missing_a_tensor_names_it(hf_copy):
    weights_file = hf_copy / 'model.safetensors'
    tensors = load_file(str(weights_file))
    del tensors['encoder.layer.0.attention.self.query.weight']
    save_file(tensors, str(weights_file))
    start_fails(ModelError, weights_file, 'encoder/layer_0/attention/self/query/kernel', 'missing',
                model_dir=str(hf_copy))


def test_config_mismatching_the_weights_names_file_and_shapes(hf_copy):
    config = json.loads((hf_copy / 'config.json').read_text())
    config['hidden_size'] = 64
    (hf_copy / 'config.json').write_text(json.dumps(config))
    start_fails(ModelError, hf_copy / 'model.safetensors', '(30522, 32)', '(30522, 64)', 'config.json',
                model_dir=str(hf_copy))


def test_missing_tuned_model_dir(tiny_hf_dir, tmp_path):
    start_fails(ModelError, '-tuned_model_dir', tmp_path / 'tuned', model_dir=str(tiny_hf_dir),
                tuned_model_dir=str(tmp_path / 'tuned'))


def test_corrupt_cached_graph_says_to_delete_it(tiny_hf_dir, tmp_path):
    fields = dict(model_dir=str(tiny_hf_dir), graph_tmp_dir=str(tmp_path))
    Encoder(EngineConfig(**fields)).close()
    (cached,) = tmp_path.glob('bert-graph-*.pb')
    for garbage in (b'\xff\xfe not a GraphDef' * 4, b''):
        cached.write_bytes(garbage)
        start_fails(ModelError, cached, 'delete it', **fields)


def test_unwritable_graph_cache_dir(tiny_hf_dir, tmp_path):
    blocker = tmp_path / 'a-file'
    blocker.write_text('')
    start_fails(ConfigError, blocker, '-graph_tmp_dir', model_dir=str(tiny_hf_dir), graph_tmp_dir=str(blocker))


# --- flags that do not fit the model -----------------------------------------------------------


def test_pooling_layer_beyond_the_bundled_model():
    start_fails(ConfigError, 'pooling_layer -7', '6 layers', '-1', '-6', '0 to 5', pooling_layer=(-7,))


@pytest.mark.parametrize('layer', [2, -3])
def test_pooling_layer_beyond_the_tiny_model(layer, tiny_hf_dir):
    start_fails(ConfigError, f'pooling_layer {layer}', '2 layers', '-2', '0 to 1', model_dir=str(tiny_hf_dir),
                pooling_layer=(-1, layer))


def test_max_seq_len_beyond_position_embeddings(tiny_hf_dir):
    start_fails(ConfigError, 'max_seq_len 100', 'max_position_embeddings 64', model_dir=str(tiny_hf_dir),
                max_seq_len=100)


@pytest.mark.parametrize('strategy', ['CLASSIFICATION', 'REGRESSION'])
def test_head_strategies_need_a_head(strategy, tiny_google_dir):
    start_fails(ModelError, 'output_weights', '-tuned_model_dir', model_dir=str(tiny_google_dir),
                pooling_strategy=strategy)


def test_head_with_another_label_count(tiny_google_dir, tmp_path):
    tuned = write_tiny_model(tmp_path / 'tuned', 'google', seed=1, with_head=3)
    start_fails(ModelError, 'output_weights', '(3, 32)', '(2, 32)', '-num_labels', model_dir=str(tiny_google_dir),
                tuned_model_dir=str(tuned), pooling_strategy='CLASSIFICATION', num_labels=2)
