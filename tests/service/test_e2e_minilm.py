"""End to end with the bundled all-MiniLM-L6-v2: BertClient -> real server -> the reference vectors.

The reference (shared/reference/minilm_reference.npz) was computed independently of this code;
its ``default`` config is the server's defaults: REDUCE_MEAN over layer -2, max_seq_len 25.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SEED_SENTENCES = ['First do it', 'then do it right', 'then do it better']


@pytest.fixture(scope='module')
def minilm_server(launch, bundled_model_dir):
    with launch(bundled_model_dir, ['-num_worker', '1', '-show_tokens_to_client']) as running:
        yield running


def test_seed_sentences_match_the_reference(minilm_server, reference):
    assert reference.texts[:3] == SEED_SENTENCES
    with minilm_server.client() as bc:
        vectors = bc.encode(SEED_SENTENCES)
    assert vectors.dtype == np.float32 and vectors.shape == (3, 384)
    np.testing.assert_allclose(vectors, reference.arrays['default'][:3], atol=1e-4)


def test_every_reference_text_in_one_request(minilm_server, reference):
    with minilm_server.client(check_length=False) as bc:  # some texts are longer than 25 on purpose
        vectors, tokens = bc.encode(reference.texts, show_tokens=True)
    np.testing.assert_allclose(vectors, reference.arrays['default'], atol=1e-4)
    assert tokens == reference.tokens_default


def test_pre_tokenized_reference_inputs(minilm_server, reference):
    with minilm_server.client() as bc:
        vectors, tokens = bc.encode(reference.tokenized, is_tokenized=True, show_tokens=True)
    np.testing.assert_allclose(vectors, reference.arrays['tokenized_default'], atol=1e-4)
    assert tokens == reference.tokens_tokenized_default


def test_server_config_describes_the_model(minilm_server):
    with minilm_server.client() as bc:
        config = bc.server_config
    assert config['hidden_size'] == 384 and config['output_dim'] == 384
    assert config['num_hidden_layers'] == 6
    assert config['max_seq_len'] == 25
    assert config['pooling_strategy'] == 'REDUCE_MEAN' and config['pooling_layer'] == [-2]
    assert config['show_tokens_to_client'] is True
    assert config['ready'] is True


def test_the_worker_hands_back_the_library_pages_it_read_while_starting(minilm_server, reference):
    """A worker held ~290 MiB of TensorFlow's library pages after its warm-up (graph import,
    optimisation, op registration); serving touches about 30 of them. The reference vectors above
    came from a worker that dropped the rest (residency.release_start_up_pages)."""
    from bert_serving.server.residency import file_mappings

    with minilm_server.client(check_length=False) as bc:
        np.testing.assert_allclose(bc.encode(reference.texts), reference.arrays['default'], atol=1e-4)
    [worker] = [p for p in minilm_server.server.processes if p.name.startswith('WORKER')]
    tensorflow_kb = sum(m.rss_kb for m in file_mappings(f'/proc/{worker.pid}/smaps')
                        if os.path.basename(m.path).startswith('libtensorflow'))
    assert 0 < tensorflow_kb < 120 * 1024
