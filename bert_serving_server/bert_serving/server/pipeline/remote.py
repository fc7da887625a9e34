"""``bert-serving-worker``: one worker on this machine that joins a server's ``-port_worker``.

It prepares the graph from this machine's copy of the model (the fingerprint the server checks comes
from its files and flags), then runs the same Worker as a local one, over TCP, with CurveZMQ keys
when the server runs with ``-auth_dir``.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import socket
import uuid

from bert_serving.client.security import CurveKeys

from ..config import EngineConfig
from ..log import get_logger
from ..launcher import install_stop_handler
from .worker import Worker, WorkerConfig

__all__ = ['run_remote']


def run_remote(args) -> int:
    """``bert-serving-worker``: prepares the graph from this machine's copy of the model, then joins
    the server at ``args.ip:args.port_worker`` and serves until SIGTERM or Ctrl-C.

    Returns:
        the exit code: 0 stopped, 2 cannot start, 3 refused by the server.
    """
    from ..engine.devices import batch_token_budget, cpu_threads, plan_devices, planned_layer_shards, session_threads
    from ..engine.graph import fingerprint, graph_layer_shards, prepare_graph

    logger = get_logger('WORKER', args.verbose)
    devices = plan_devices(1, args.cpu, args.device_map, logger)
    on_gpu, threads = devices[0] >= 0, cpu_threads(1)
    engine = dataclasses.replace(EngineConfig.from_namespace(args), on_gpu=on_gpu,
                                 layer_shards=planned_layer_shards(threads, on_gpu))
    graph = None if engine.engine == 'fake' else prepare_graph(engine, get_logger('GRAPH', args.verbose), isolated=True)
    intra, inter = (0, 0) if on_gpu else session_threads(threads, graph_layer_shards(engine, graph))
    keys = CurveKeys.from_files(args.server_key, args.client_key)
    host, pid = socket.gethostname(), os.getpid()
    config = WorkerConfig(
        name=f'REMOTE-{host}-{pid}', identity=f'remote-{host}-{pid}-{uuid.uuid4().hex[:8]}',
        fingerprint=fingerprint(engine, None if graph is None else graph.files), device_id=devices[0],
        backend_addr=f'tcp://{args.ip}:{args.port_worker}', server_host=args.ip, local=False,
        intra_op_threads=intra, inter_op_threads=inter,
        gpu_memory_fraction=None if devices[0] < 0 else args.gpu_memory_fraction,
        credit=2 if args.prefetch_size > 0 else 1, max_batch_size=args.max_batch_size,
        max_batch_tokens=batch_token_budget(devices[0], args.max_batch_tokens, args.max_batch_size, engine.max_seq_len),
        server_timeout=args.server_timeout,
        curve=None if keys is None else (keys.server_public, keys.public, keys.secret), verbose=args.verbose)
    stop = install_stop_handler()
    signal.signal(signal.SIGINT, lambda *_: stop.set())  # run by hand: Ctrl-C stops it
    logger.info('joining the server at %s as %s (%s, max_batch_tokens %d)', config.backend_addr, config.name,
                'cpu' if devices[0] < 0 else f'gpu:{devices[0]}', config.max_batch_tokens)
    return Worker(engine, config, graph, stop).run()


