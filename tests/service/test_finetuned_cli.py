"""The original README's fine-tuned model command, typed as a user types it::

    bert-serving-start -model_dir BASE -tuned_model_dir TUNED -ckpt_name model.ckpt-343

BASE is a Google-layout tiny model (bert_config.json, vocab.txt, bert_model.ckpt); TUNED holds only
what run_classifier.py leaves behind: model.ckpt-343 with other weights, Adam slots, global_step and
a classifier head. Each server is a real ``bert-serving-start`` subprocess; a BertClient encodes and
the vectors must equal the numpy oracle on the TUNED weights.

Dimension legend: B batch, H hidden width (32), K labels.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from numpy_bert import inputs_from_tokens, numpy_bert, numpy_head, numpy_pool
from service_support import REPLY_MS, alive, assert_port_free, children_of, wait_until
from tiny_model import tiny_weights, write_finetuned_checkpoint

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CKPT = 'model.ckpt-343'
LABELS = 3
READY_SECONDS = 240  # four servers start at once on a 2-core machine
EXIT_SECONDS = 15
ATOL, RTOL = 1e-5, 1e-4
# Whole words of the vocab, so the word pieces are the words themselves (checked in _tokens).
TEXTS = ['hello world', 'the quick brown fox jumps over the lazy dog', 'how old are you ||| what is your age', 'a']


def _start_command() -> List[str]:
    script = REPO / '.venv' / 'bin' / 'bert-serving-start'
    return [str(script)] if script.exists() else [sys.executable, '-m', 'bert_serving.server.cli']


class CliServer:
    """A ``bert-serving-start`` subprocess on two fresh ports, its output in files."""

    def __init__(self, folder: Path, flags: List[str], port: int, port_out: int, graph_dir: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.port, self.port_out = port, port_out
        self.stderr_path = folder / 'stderr.txt'
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3',
                   PYTHONPATH=os.pathsep.join([str(REPO / 'bert_serving_server'), str(REPO / 'bert_serving_client')]))
        argv = _start_command() + flags + ['-port', str(port), '-port_out', str(port_out), '-cpu',
                                           '-graph_tmp_dir', str(graph_dir)]
        with open(folder / 'stdout.txt', 'w') as out, open(self.stderr_path, 'w') as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=str(folder))

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors='replace')

    def is_ready(self) -> bool:
        return 'ready to serve requests' in self.stderr

    def client(self):
        from bert_serving.client import BertClient

        return BertClient(ip='127.0.0.1', port=self.port, port_out=self.port_out, timeout=REPLY_MS)

    def stop(self) -> None:
        """Ctrl-C, as a user stops it; SIGKILL by pid for whatever is left after EXIT_SECONDS."""
        children = children_of(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=EXIT_SECONDS)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=EXIT_SECONDS)
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not any(alive(pid) for pid in children), EXIT_SECONDS)


@pytest.fixture(scope='module')
def weights() -> Dict[str, dict]:
    """Fine-tuned weights: seed 1 with a K-label head, seed 2 with a 1-unit regression head."""
    return {'classifier': tiny_weights(1, with_head=LABELS), 'regressor': tiny_weights(2, with_head=1)}


@pytest.fixture(scope='module')
def servers(tmp_path_factory, tiny_google_dir, weights, pick_port) -> Dict[str, CliServer]:
    """Four servers, started together: the README command, CLASSIFICATION, REGRESSION and -fp16."""
    root = tmp_path_factory.mktemp('finetuned-cli')
    classifier = write_finetuned_checkpoint(root / 'mrpc_output', weights['classifier'], ckpt_name=CKPT)
    regressor = write_finetuned_checkpoint(root / 'sts_output', weights['regressor'], ckpt_name=CKPT)
    readme = ['-model_dir', str(tiny_google_dir), '-tuned_model_dir', str(classifier), '-ckpt_name', CKPT]
    flags = {
        'readme': readme,
        'classification': readme + ['-pooling_strategy', 'CLASSIFICATION', '-num_labels', str(LABELS)],
        'regression': ['-model_dir', str(tiny_google_dir), '-tuned_model_dir', str(regressor), '-ckpt_name', CKPT,
                       '-pooling_strategy', 'REGRESSION'],
        'fp16': readme + ['-fp16'],
    }
    started: Dict[str, CliServer] = {}
    try:
        for name, argv in flags.items():
            started[name] = CliServer(root / name, argv, pick_port(), pick_port(), root / 'graphs')
        ready = wait_until(lambda: all(s.is_ready() or s.proc.poll() is not None for s in started.values()),
                           READY_SECONDS, interval=0.5)
        for name, server in started.items():
            assert ready and server.proc.poll() is None and server.is_ready(), \
                f'{name} did not start:\n{server.stderr[-3000:]}'
        yield started
    finally:
        for server in started.values():
            server.stop()
        for server in started.values():
            assert_port_free(server.port)
            assert_port_free(server.port_out)


def _tokens(vocab: Path) -> List[List[str]]:
    words = set(vocab.read_text(encoding='utf-8').splitlines())
    tokens = []
    for text in TEXTS:
        sides = [side.split() for side in text.split(' ||| ')]
        assert all(word in words for side in sides for word in side), text
        tokens.append(['[CLS]'] + [t for side in sides for t in side + ['[SEP]']])
    return tokens


def _numpy(strategy: str, weights: dict, vocab: Path) -> np.ndarray:
    """The expected vectors of TEXTS, float64: [B, H] for REDUCE_MEAN of layer -2, [B, K] for heads."""
    tokens = _tokens(vocab)
    ids, mask, types = inputs_from_tokens(vocab, tokens)
    layers, pooled = numpy_bert(weights, ids, mask, types)
    if strategy in ('CLASSIFICATION', 'REGRESSION'):
        return numpy_head(strategy, weights, pooled)
    return numpy_pool({'pooling_strategy': strategy, 'pooling_layer': (-2,)}, layers, pooled, mask, tokens)


def _encode(server: CliServer) -> np.ndarray:
    with server.client() as bc:
        return bc.encode(TEXTS)


def test_readme_command_encodes_with_the_tuned_weights(servers, weights, tiny_google_dir):
    vectors = _encode(servers['readme'])

    vocab = tiny_google_dir / 'vocab.txt'
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(vectors, _numpy('REDUCE_MEAN', weights['classifier'], vocab), atol=ATOL, rtol=RTOL)
    base = _numpy('REDUCE_MEAN', tiny_weights(0), vocab)
    assert np.abs(vectors - base).max() > 100 * ATOL, 'the vectors are those of the base model'


def test_classification_through_the_cli(servers, weights, tiny_google_dir):
    probs = _encode(servers['classification'])

    assert probs.shape == (len(TEXTS), LABELS)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probs, _numpy('CLASSIFICATION', weights['classifier'], tiny_google_dir / 'vocab.txt'),
                               atol=ATOL, rtol=RTOL)


def test_regression_through_the_cli(servers, weights, tiny_google_dir):
    with servers['regression'].client() as bc:
        scores = bc.encode(TEXTS)
        output_dim = bc.server_config['output_dim']

    assert scores.shape == (len(TEXTS), 1) and output_dim == 1
    np.testing.assert_allclose(scores, _numpy('REGRESSION', weights['regressor'], tiny_google_dir / 'vocab.txt'),
                               atol=ATOL, rtol=RTOL)


def test_fp16_server_sends_float16(servers, weights, tiny_google_dir):
    vectors = _encode(servers['fp16'])

    assert vectors.dtype == np.float16 and vectors.shape == (len(TEXTS), 32)
    expected = _numpy('REDUCE_MEAN', weights['classifier'], tiny_google_dir / 'vocab.txt')
    cosine = (vectors * expected).sum(1) / (np.linalg.norm(vectors.astype(np.float64), axis=1)
                                            * np.linalg.norm(expected, axis=1))
    assert cosine.min() >= 0.999, f'row {cosine.argmin()} has cosine {cosine.min():.6f}'
    assert '-fp16: computing in' in servers['fp16'].stderr


def test_the_front_process_has_its_graph_built_in_a_child_and_never_loads_tensorflow(servers):
    """Each server built its graph (a fresh cache), but in a child process: the ventilator's own
    process maps no TensorFlow library and stays small, while its workers map it."""
    for name, server in servers.items():
        assert 'graph built in' in server.stderr or 'reusing the cached graph' in server.stderr, name
        with open(f'/proc/{server.proc.pid}/maps') as f:
            front = f.read()
        assert 'libtensorflow' not in front, f'{name}: the front process loaded TensorFlow'
        with open(f'/proc/{server.proc.pid}/status') as f:
            rss_mib = next(int(line.split()[1]) for line in f if line.startswith('VmRSS')) / 1024
        assert rss_mib < 150, f'{name}: front process RSS {rss_mib:.0f} MiB'
        workers = [pid for pid in children_of(server.proc.pid) if _maps_tensorflow(pid)]
        assert workers, f'{name}: no child of the server runs TensorFlow'


def _maps_tensorflow(pid: int) -> bool:
    try:
        with open(f'/proc/{pid}/maps') as f:
            return 'libtensorflow' in f.read()
    except OSError:
        return False
