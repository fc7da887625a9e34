"""The Python API of the server: BertServer as a context manager, BertServer.shutdown(args), the
1.x helper import, and flag errors raised by the constructor before any process starts."""
from __future__ import annotations

import argparse
import multiprocessing
import os
import socket

import numpy as np
import pytest

from bert_serving.client import BertServingError
from bert_serving.server.args import get_args_parser as parser_in_args
from bert_serving.server.service import BertServer

from service_support import FAKE, assert_port_free, children_of, server_args

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _no_children() -> set:
    multiprocessing.active_children()  # reaps what has ended
    return children_of(os.getpid())


def _shared_libraries(pid: int) -> set:
    """Which of a few markers the paths of a process's mapped files contain."""
    with open(f'/proc/{pid}/maps') as f:
        paths = {line.split()[-1] for line in f if '/' in line}
    markers = {'libtensorflow_cc': 'libtensorflow_cc', 'libtensorflow_framework': 'libtensorflow_framework',
               'h5py': '/h5py/', 'scipy': '/scipy/', 'lite': '/tensorflow/lite/'}
    return {name for name, part in markers.items() if any(part in p for p in paths)}


def test_helper_import_of_1x_still_works():
    from bert_serving.server.helper import get_args_parser

    assert get_args_parser is parser_in_args
    args = get_args_parser().parse_args(['-model_dir', '/some/model', '-num_worker', '3'])
    assert args.model_dir == '/some/model' and args.num_worker == 3
    assert args.port == 5555 and args.port_out == 5556 and args.max_seq_len == 25


def test_context_manager_starts_and_closes(tiny_hf_dir, free_port, tiny_expected):
    port, port_out = free_port(), free_port()
    with BertServer(server_args(tiny_hf_dir, port, port_out, ['-num_worker', '1'])) as server:
        assert server.is_ready.is_set(), 'with BertServer(...) returned before the server was ready'
        # Large requests are sorted into pieces by word pieces (characters would say 11 and 9).
        assert server.scheduler.lengths(['hello world', 'a b c d e'], False) == [2, 5]
        from bert_serving.client import BertClient

        with BertClient(ip='127.0.0.1', port=port, port_out=port_out, timeout=20000) as bc:
            np.testing.assert_allclose(bc.encode(['hello world']), tiny_expected.many(['hello world']), atol=1e-5)
        processes = list(server.processes)
        [worker] = [p for p in processes if p.name == 'WORKER-0']
        assert _shared_libraries(worker.pid) & {'libtensorflow_cc', 'libtensorflow_framework'}
        # The worker ran the model without TensorFlow's public API (engine/tfimport.py): that API
        # loads h5py (a TensorFlow dependency), TF Lite's bindings and, when installed, SciPy.
        assert not _shared_libraries(worker.pid) & {'h5py', 'scipy', 'lite'}
    assert not server.is_alive()
    assert not any(p.is_alive() for p in processes)
    assert server.failure is None
    assert_port_free(port)
    assert_port_free(port_out)


def test_a_server_built_from_configs_serves_and_names_every_flag(free_port):
    """BertServer(server=..., engine=...): the typed configs, no argparse; SHOW_CONFIG still names
    every flag of bert-serving-start, as 1.10's did, with secrets hidden."""
    from bert_serving.client import BertClient
    from bert_serving.server.config import EngineConfig, ServerConfig
    from bert_serving.server.engine.fake import FAKE_WIDTH

    port, port_out = free_port(), free_port()
    server = ServerConfig(port=port, port_out=port_out, num_worker=1, bind_host='127.0.0.1', max_batch_size=64)
    engine = EngineConfig(engine='fake', max_seq_len=30)
    with BertServer(server=server, engine=engine) as running:
        with BertClient(ip='127.0.0.1', port=port, port_out=port_out, timeout=20000) as bc:
            assert bc.encode(['hello world', 'two']).shape == (2, FAKE_WIDTH)
            config = bc.server_config
    flags = {a.dest for a in parser_in_args()._actions} - {'help', 'version'}
    assert flags <= set(config), sorted(flags - set(config))
    assert (config['max_seq_len'], config['max_batch_size'], config['engine']) == (30, 64, 'fake')
    assert running.failure is None
    with pytest.raises(TypeError, match='not both'):
        BertServer(parser_in_args().parse_args([]), server=server)


def test_a_server_that_cannot_start_raises_from_with(free_port):
    port = free_port()
    with socket.socket() as taken:
        taken.bind(('0.0.0.0', port))
        taken.listen()
        with pytest.raises(RuntimeError, match=r'stopped while starting.*port_out \d+ already in use'):
            with BertServer(server_args(FAKE, free_port(), port, ['-num_worker', '1'])):
                pass


def test_1x_imports_of_pooling_strategy_and_run_args():
    from bert_serving.server.graph import PoolingStrategy
    from bert_serving.server.helper import get_benchmark_parser, get_run_args, get_shutdown_parser

    assert PoolingStrategy.REDUCE_MEAN.name == 'REDUCE_MEAN'
    args = get_run_args(get_shutdown_parser, printed=False, argv=['-port', '7000'])
    assert args.port == 7000 and args.timeout == 5000
    assert get_run_args(get_benchmark_parser, printed=False, argv=[]).num_client == 1


def test_shutdown_with_a_namespace(free_port):
    port, port_out = free_port(), free_port()
    server = BertServer(server_args(FAKE, port, port_out, ['-num_worker', '1']))
    server.start()
    try:
        assert server.is_ready.wait(120), server.failure
        assert BertServer.shutdown(argparse.Namespace(ip='127.0.0.1', port=port, timeout=5000)) is True
        server.join(timeout=30)  # the server stops on its own
        assert not server.is_alive()
        assert server.failure is None
        assert not any(p.is_alive() for p in server.processes)
    finally:
        server.close()
    server.close()  # safe to call again
    assert_port_free(port)
    assert_port_free(port_out)


@pytest.mark.parametrize('flags, error, words', [
    (['-pooling_layer', '-3'], BertServingError, 'pooling_layer -3 is out of range for a model with 2 layers'),
    (['-pooling_layer', '-1', '5'], BertServingError, 'pooling_layer 5 is out of range'),
    (['-max_seq_len', '100'], BertServingError, 'max_seq_len 100 exceeds max_position_embeddings'),
    (['-num_worker', '0'], BertServingError, 'num_worker 0 .a pure front. needs -port_worker'),
    (['-num_worker', '-1'], BertServingError, 'num_worker must be 0 or more'),
    (['-port_worker', '7001', '-port_worker_sink', '7001'], BertServingError,
     'port_worker and port_worker_sink must differ'),
], ids=['layer too deep', 'one of two layers out of range', 'max_seq_len too long', 'no worker', 'negative workers',
        'worker ports clash'])
def test_bad_flags_raise_from_the_constructor(tiny_hf_dir, free_port, flags, error, words):
    before = _no_children()
    port, port_out = free_port(), free_port()
    with pytest.raises(error, match=words):
        BertServer(server_args(tiny_hf_dir, port, port_out, flags))
    assert _no_children() == before, 'a process was started for a server that cannot run'
    assert_port_free(port)


def test_missing_model_dir_raises_from_the_constructor(tmp_path, free_port):
    before = _no_children()
    missing = tmp_path / 'no-such-model'
    with pytest.raises(BertServingError, match='no-such-model'):
        BertServer(server_args(missing, free_port(), free_port()))
    assert _no_children() == before


def test_same_port_twice_raises_from_the_constructor(tiny_hf_dir, free_port):
    port = free_port()
    with pytest.raises(ValueError, match='port and port_out must differ'):
        BertServer(server_args(tiny_hf_dir, port, port))


@pytest.mark.parametrize('taken', ['port', 'port_out', 'http_port'])
def test_a_port_in_use_stops_the_server_with_a_reason(free_port, taken):
    """Binding happens in the started thread (port), in the sink process (port_out) and in the
    HTTP proxy process (http_port): either way the server stops by itself and says why."""
    port, port_out, http_port = free_port(), free_port(), free_port()
    with socket.socket() as squatter:
        squatter.bind(('0.0.0.0', {'port': port, 'port_out': port_out, 'http_port': http_port}[taken]))
        squatter.listen()
        server = BertServer(server_args(FAKE, port, port_out, ['-num_worker', '1', '-http_port', str(http_port)]))
        server.start()
        try:
            server.join(timeout=60)
            assert not server.is_alive(), 'the server runs on without one of its ports'
        finally:
            server.close()
    if taken != 'http_port':  # the proxy binds in parallel with the workers' start
        assert not server.is_ready.is_set()
    assert server.failure is not None and ('in use' in server.failure)
    if taken != 'port':
        assert taken in server.failure
    assert not any(p.is_alive() for p in server.processes)
