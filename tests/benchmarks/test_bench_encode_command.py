"""The parts of ``make bench`` that need a server but not the model, on ``-engine fake``: (i)
``bert-serving-encode`` in a subprocess against one ``BertClient.encode``, and (j) the second server
with ``-bf16``. No timing is asserted, only that the figures are there and the vectors agree.
"""
from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # benchmarks/ is a top-level folder, not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks import compare, service_peer  # noqa: E402
from benchmarks.encode_command import (VECTOR_ATOL, cpu_seconds, encode_command,  # noqa: E402
                                       measure_encode_command, vector_difference)

FAKE_FLAGS = ['-engine', 'fake', '-cpu']
LINES = [f'sentence number {i} of the bench' + ' word' * (i % 7) for i in range(40)]


def test_the_command_is_the_console_script_beside_python_else_its_module(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, 'executable', str(tmp_path / 'python'))
    assert encode_command() == [str(tmp_path / 'python'), '-m', 'bert_serving.client.encode_cli']
    script = tmp_path / 'bert-serving-encode'
    script.write_text('#!/bin/sh\n')
    script.chmod(0o755)
    assert encode_command() == [str(script)]


def test_cpu_seconds_grow_with_work_and_skip_gone_processes():
    before = cpu_seconds([os.getpid()])
    sum(i * i for i in range(2_000_000))
    assert cpu_seconds([os.getpid()]) > before
    assert cpu_seconds([2 ** 22 + 12345]) == 0.0  # above the kernel's pid_max: never a live process


def test_vector_difference_is_the_largest_component_and_inf_for_another_shape():
    a = np.zeros((3, 4), dtype=np.float32)
    b = a.copy()
    b[2, 1] = -3e-6
    assert vector_difference(a, b) == pytest.approx(3e-6)
    assert vector_difference(a, a[:2]) == float('inf')


@pytest.fixture
def fake_server():
    server, _ = service_peer.start_server(compare.SERVER_FLAGS + FAKE_FLAGS)
    yield server
    server.close()


@pytest.mark.e2e
@pytest.mark.slow
def test_encode_command_writes_the_vectors_of_one_encode(fake_server):
    figures = measure_encode_command(fake_server.args.port, fake_server.args.port_out, LINES, 2,
                                     service_peer.CLIENT_TIMEOUT_MS, lambda message: None,
                                     [pid for _, pid in fake_server.workers])
    assert figures['encode_cli_max_abs_diff'] <= VECTOR_ATOL
    assert figures['encode_cli_sentences_per_s'] > 0 and figures['encode_cli_b_sentences_per_s'] > 0
    assert figures['ratio_encode_cli_over_b'] == pytest.approx(
        figures['encode_cli_sentences_per_s'] / figures['encode_cli_b_sentences_per_s'])
    assert figures['encode_cli_worker_cpu_s'] >= 0 and figures['encode_cli_b_worker_cpu_s'] >= 0
    assert figures['encode_cli_command'] in ('bert-serving-encode', 'python -m bert_serving.client.encode_cli')


@pytest.mark.e2e
@pytest.mark.slow
def test_bf16_run_measures_a_second_server_against_the_first_ones_vectors(fake_server):
    reference = service_peer.measure_one_client(fake_server, LINES, 1)['vectors']
    opts = types.SimpleNamespace(repeat=1, clients=4, latency_requests=5)
    figures = compare.measure_bf16(compare.SERVER_FLAGS + FAKE_FLAGS, LINES, opts, reference)
    assert figures['bf16_min_cosine'] == pytest.approx(1.0, abs=1e-6)  # the fake engine ignores -bf16
    assert figures['bf16_b_sentences_per_s'] > 0 and figures['bf16_c_sentences_per_s'] > 0
    assert set(figures['bf16_latency']) == {'p50_ms', 'p99_ms'}
    assert [name.split()[0] for name in figures['bf16_worker_memory']] == ['WORKER-0']
    derived = compare.derive_ratios(dict(figures, onnx_int8_sentences_per_s=1.0))
    assert derived['ratio_bf16_over_int8'] == figures['bf16_b_sentences_per_s']


@pytest.mark.e2e
@pytest.mark.slow
def test_the_scrape_saved_after_the_runs_counts_their_requests():
    """make bench saves the first server's /metrics after its runs: every request it sent is there."""
    from prometheus_client.parser import text_string_to_metric_families

    http_port = service_peer.free_port()
    server, _ = service_peer.start_server(compare.SERVER_FLAGS + FAKE_FLAGS + ['-http_port', str(http_port)])
    try:
        service_peer.measure_one_client(server, LINES, 2)  # a warm-up and two timed calls
        text = compare.scrape_metrics(http_port)
    finally:
        server.close()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    ok = [s.value for s in families['bert_server_requests'].samples
          if s.name == 'bert_server_requests_total' and s.labels == {'door': 'zmq', 'outcome': 'ok'}]
    assert ok == [3.0]


def test_a_server_process_that_ends_before_it_is_ready_fails_the_start_at_once():
    """Not the full READY_TIMEOUT_S: its process is watched while the reply is awaited."""
    import multiprocessing
    import queue
    import time

    server = service_peer.ServerProcess.__new__(service_peer.ServerProcess)
    ctx = multiprocessing.get_context('spawn')
    server._replies = queue.Queue()
    server._proc = ctx.Process(target=os._exit, args=(3,))
    server._proc.start()
    reply = server._ready_reply(time.monotonic() + 120)
    server._proc.join(timeout=30)
    assert 'exit code 3' in reply['failure']
    server._replies.put({'workers': []})
    assert server._ready_reply(time.monotonic() + 120) == {'workers': []}  # a reply is taken even so
