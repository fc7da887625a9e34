"""The frozen-graph cache: an unchanged restart reuses the graph, any change that shapes it builds a
new one, and the cache lives in a persistent user directory."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from bert_serving.server.engine import graph
from bert_serving.server.config import EngineConfig
from bert_serving.server.engine.encoder import Encoder
from bert_serving.server.errors import ModelError


@pytest.fixture
def cache(tmp_path) -> Path:
    """An empty graph cache of this test alone."""
    return tmp_path / 'graphs'


@pytest.fixture
def model_copy(tiny_hf_dir, tmp_path) -> Path:
    """A private copy of the tiny HF model that the test may modify."""
    return Path(shutil.copytree(tiny_hf_dir, tmp_path / 'model'))


def _prepare(model_dir, cache, **fields):
    return graph.prepare_graph(EngineConfig(model_dir=str(model_dir), graph_tmp_dir=str(cache), **fields))


def test_second_prepare_reuses_the_graph(tiny_hf_dir, cache):
    first = _prepare(tiny_hf_dir, cache)
    second = _prepare(tiny_hf_dir, cache)

    assert not first.from_cache
    assert second.from_cache
    assert second.path == first.path
    assert Path(first.path).parent == cache
    assert [p.name for p in cache.iterdir()] == [Path(first.path).name]  # no partial files left behind


@pytest.mark.parametrize('change', [
    dict(pooling_strategy='REDUCE_MAX'),
    dict(pooling_strategy='NONE'),
    dict(pooling_layer=(-1,)),
    dict(pooling_layer=(-2, -1)),
    dict(fp16=True),
    dict(mask_cls_sep=True),
], ids=lambda change: '-'.join(f'{k}={v}' for k, v in change.items()))
def test_graph_shaping_flags_give_a_new_graph(change, tiny_hf_dir, cache):
    base = _prepare(tiny_hf_dir, cache)
    changed = _prepare(tiny_hf_dir, cache, **change)

    assert not changed.from_cache
    assert changed.path != base.path
    assert _prepare(tiny_hf_dir, cache, **change).from_cache


def test_input_side_flags_reuse_the_graph(tiny_hf_dir, cache):
    # max_seq_len and casing only change the inputs fed to the graph, not the graph itself.
    base = _prepare(tiny_hf_dir, cache)
    other = _prepare(tiny_hf_dir, cache, max_seq_len=40, do_lower_case=False)

    assert other.from_cache and other.path == base.path


def test_changed_model_bytes_give_a_new_graph(model_copy, cache, tiny_texts):
    config = EngineConfig(model_dir=str(model_copy), graph_tmp_dir=str(cache))
    before = graph.prepare_graph(config)
    encoder = Encoder(config)
    try:
        old_vectors, _ = encoder.encode(tiny_texts)
    finally:
        encoder.close()

    weights_file = model_copy / 'model.safetensors'
    tensors = load_file(str(weights_file))
    tensors['encoder.layer.0.output.dense.bias'][0] += 0.5  # one element: LayerNorm cancels a uniform shift
    save_file(tensors, str(weights_file), metadata={'format': 'pt'})

    after = graph.prepare_graph(config)
    assert not after.from_cache
    assert after.path != before.path
    encoder = Encoder(config)
    try:
        new_vectors, _ = encoder.encode(tiny_texts)
    finally:
        encoder.close()
    assert not np.allclose(new_vectors, old_vectors, atol=1e-3)


def test_changed_vocab_gives_a_new_graph(model_copy, cache, tiny_texts):
    # With -mask_cls_sep the ids of [CLS] and [SEP] are part of the graph.
    config = EngineConfig(model_dir=str(model_copy), graph_tmp_dir=str(cache), mask_cls_sep=True)
    before = graph.prepare_graph(config)

    vocab_file = model_copy / 'vocab.txt'
    lines = vocab_file.read_text(encoding='utf-8').splitlines()
    cls, sep = lines.index('[CLS]'), lines.index('[SEP]')
    lines[cls], lines[sep] = lines[sep], lines[cls]
    vocab_file.write_text('\n'.join(lines) + '\n', encoding='utf-8')

    after = graph.prepare_graph(config)
    assert not after.from_cache
    assert after.path != before.path


def test_second_encoder_start_gives_identical_vectors(tiny_google_dir, cache, tiny_texts):
    config = EngineConfig(model_dir=str(tiny_google_dir), graph_tmp_dir=str(cache), pooling_strategy='NONE')
    runs = []
    for _ in range(2):
        encoder = Encoder(config)
        try:
            runs.append((encoder.graph.from_cache, *encoder.encode(tiny_texts)))
        finally:
            encoder.close()

    (first_cached, first, first_tokens), (second_cached, second, second_tokens) = runs
    assert (first_cached, second_cached) == (False, True)
    assert second_tokens == first_tokens
    np.testing.assert_array_equal(second, first)


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv('BERT_SERVING_CACHE_DIR', str(tmp_path / 'explicit'))
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert graph.default_cache_dir() == str(tmp_path / 'explicit')

    monkeypatch.delenv('BERT_SERVING_CACHE_DIR')
    assert graph.default_cache_dir() == str(tmp_path / 'xdg' / 'bert-serving')

    monkeypatch.delenv('XDG_CACHE_HOME')
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert graph.default_cache_dir() == str(tmp_path / 'home' / '.cache' / 'bert-serving')


def test_graph_without_tmp_dir_persists_in_the_user_cache(monkeypatch, tmp_path, tiny_hf_dir):
    monkeypatch.delenv('BERT_SERVING_CACHE_DIR', raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    config = EngineConfig(model_dir=str(tiny_hf_dir))

    built = graph.prepare_graph(config)

    expected_dir = tmp_path / 'xdg' / 'bert-serving'
    assert Path(built.path).parent == expected_dir
    assert Path(built.path).name.startswith('bert-graph-')  # named by its key, so a restart finds it
    assert os.path.isfile(built.path)
    assert graph.prepare_graph(config).from_cache


def test_an_isolated_build_caches_the_same_graph_as_an_in_process_one(tiny_hf_dir, tmp_path):
    config = EngineConfig(model_dir=str(tiny_hf_dir), graph_tmp_dir=str(tmp_path / 'isolated'), layer_shards=2)

    built = graph.prepare_graph(config, isolated=True)  # in a child process
    again = graph.prepare_graph(config, isolated=True)
    here = graph.prepare_graph(dataclasses.replace(config, graph_tmp_dir=str(tmp_path / 'here')))

    assert not built.from_cache and os.path.isfile(built.path)
    assert again.from_cache and again.path == built.path
    assert os.path.basename(here.path) == os.path.basename(built.path)
    assert built.bert_config == here.bert_config and built.files == here.files


def test_an_isolated_build_raises_the_builders_error_with_its_message(model_copy, cache):
    weights_file = model_copy / 'model.safetensors'
    tensors = load_file(str(weights_file))
    del tensors['encoder.layer.0.output.dense.bias']  # found missing only when the build reads the weights
    save_file(tensors, str(weights_file), metadata={'format': 'pt'})
    config = EngineConfig(model_dir=str(model_copy), graph_tmp_dir=str(cache))

    with pytest.raises(ModelError) as here:
        graph.prepare_graph(config)
    with pytest.raises(ModelError) as isolated:
        graph.prepare_graph(config, isolated=True)

    assert str(isolated.value) == str(here.value)
    assert 'output.dense.bias' in str(isolated.value) or 'output/dense/bias' in str(isolated.value)
    assert not list(cache.glob('*.pb')), 'a failed build must not leave a graph in the cache'
