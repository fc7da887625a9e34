"""The tiny-model generator writes the same weights in both layouts, and each layout loads."""

import json

import numpy as np
import pytest

from tiny_model import hf_name, tiny_weights, write_tiny_model


def test_weights_are_deterministic_per_seed():
    a, b, c = tiny_weights(0, vocab_size=50), tiny_weights(0, vocab_size=50), tiny_weights(1, vocab_size=50)
    assert a.keys() == b.keys() == c.keys()
    for name in a:
        assert a[name].dtype == np.float32
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.allclose(a['bert/pooler/dense/kernel'], c['bert/pooler/dense/kernel'])


def test_weight_shapes_and_scales():
    w = tiny_weights(0, hidden=32, layers=2, intermediate=64, max_position=64, vocab_size=100, with_head=3)
    assert w['bert/embeddings/word_embeddings'].shape == (100, 32)
    assert w['bert/embeddings/position_embeddings'].shape == (64, 32)
    assert w['bert/embeddings/token_type_embeddings'].shape == (2, 32)
    assert w['bert/encoder/layer_1/intermediate/dense/kernel'].shape == (32, 64)
    assert w['bert/encoder/layer_1/output/dense/kernel'].shape == (64, 32)
    assert w['output_weights'].shape == (3, 32)
    assert w['output_bias'].shape == (3,)
    assert 'bert/encoder/layer_2/output/dense/kernel' not in w
    gamma = w['bert/encoder/layer_0/output/LayerNorm/gamma']
    assert abs(gamma.mean() - 1.0) < 0.1 and gamma.std() > 0.01
    assert 0.01 < w['bert/encoder/layer_0/attention/self/query/kernel'].std() < 0.03


def test_hf_names():
    assert hf_name('bert/embeddings/word_embeddings') == 'embeddings.word_embeddings.weight'
    assert hf_name('bert/embeddings/LayerNorm/gamma') == 'embeddings.LayerNorm.weight'
    assert hf_name('bert/encoder/layer_1/attention/self/key/bias') == 'encoder.layer.1.attention.self.key.bias'
    assert hf_name('bert/encoder/layer_0/attention/output/LayerNorm/beta') == 'encoder.layer.0.attention.output.LayerNorm.bias'
    assert hf_name('bert/encoder/layer_0/output/dense/kernel') == 'encoder.layer.0.output.dense.weight'
    assert hf_name('bert/pooler/dense/kernel') == 'pooler.dense.weight'
    with pytest.raises(KeyError):
        hf_name('output_weights')


def test_google_checkpoint_round_trips(tiny_google_dir, bundled_model_dir):
    tf = pytest.importorskip('tensorflow')
    config = json.loads((tiny_google_dir / 'bert_config.json').read_text())
    vocab_lines = (bundled_model_dir / 'vocab.txt').read_text(encoding='utf-8').splitlines()
    assert config['vocab_size'] == len(vocab_lines)
    assert config['hidden_size'] == 32 and config['num_hidden_layers'] == 2 and config['num_attention_heads'] == 2
    assert config['hidden_act'] == 'gelu' and config['type_vocab_size'] == 2
    assert (tiny_google_dir / 'vocab.txt').read_bytes() == (bundled_model_dir / 'vocab.txt').read_bytes()

    reader = tf.train.load_checkpoint(str(tiny_google_dir / 'bert_model.ckpt'))
    expected = tiny_weights(0, vocab_size=config['vocab_size'])
    assert set(reader.get_variable_to_shape_map()) == set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(reader.get_tensor(name), value, err_msg=name)


def test_hf_safetensors_holds_the_same_weights(tiny_hf_dir, tiny_google_dir):
    from safetensors.numpy import load_file

    config = json.loads((tiny_hf_dir / 'config.json').read_text())
    assert config['model_type'] == 'bert' and config['layer_norm_eps'] == 1e-12
    tensors = load_file(str(tiny_hf_dir / 'model.safetensors'))
    expected = tiny_weights(0, vocab_size=config['vocab_size'])
    assert set(tensors) == {hf_name(n) for n in expected}
    for name, value in expected.items():
        want = value.T if name.endswith('/kernel') else value
        np.testing.assert_array_equal(tensors[hf_name(name)], want, err_msg=name)
    assert (tiny_hf_dir / 'vocab.txt').read_bytes() == (tiny_google_dir / 'vocab.txt').read_bytes()


def test_head_and_prefix(tmp_path):
    from safetensors.numpy import load_file

    vocab = tmp_path / 'vocab.txt'
    vocab.write_text('\n'.join(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'hello', 'world']) + '\n')
    model = write_tiny_model(tmp_path / 'hf', 'hf', seed=3, vocab_file=vocab, with_head=4, prefix='bert.')
    tensors = load_file(str(model / 'model.safetensors'))
    assert tensors['bert.embeddings.word_embeddings.weight'].shape == (7, 32)
    assert tensors['classifier.weight'].shape == (4, 32)
    expected = tiny_weights(3, vocab_size=7, with_head=4)
    np.testing.assert_array_equal(tensors['classifier.weight'], expected['output_weights'])
    assert json.loads((model / 'config.json').read_text())['vocab_size'] == 7
    with pytest.raises(ValueError):
        write_tiny_model(tmp_path / 'bad', 'hf', hidden=30, heads=4, vocab_file=vocab)


@pytest.mark.slow
def test_hf_layout_loads_in_transformers_without_missing_keys(tiny_hf_dir, monkeypatch):
    """An independent loader accepts the layout: no missing, unexpected or mis-shaped weights."""
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    transformers = pytest.importorskip('transformers')
    model, info = transformers.BertModel.from_pretrained(str(tiny_hf_dir), output_loading_info=True)
    assert not info['missing_keys'] and not info['unexpected_keys'] and not info['mismatched_keys']
    expected = tiny_weights(0, vocab_size=model.config.vocab_size)
    np.testing.assert_array_equal(
        model.encoder.layer[1].intermediate.dense.weight.detach().numpy(),
        expected['bert/encoder/layer_1/intermediate/dense/kernel'].T,
    )
