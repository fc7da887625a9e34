"""BertServer: starts the sink and the workers, and runs the ventilator in its thread.

    args = get_args_parser().parse_args(['-num_worker', '2'])
    with BertServer(args) as server:   # start(), wait until ready ... close()
        ...

or, as the original's README has it, in a plain script (no ``__main__`` guard needed: the sink, the
workers and the HTTP proxy run as their own commands, see launcher.py)::

    server = BertServer(args)
    server.start()                      # serves until shut down; the script then exits
    ...
    BertServer.shutdown(port=5555)      # from this or any other process
"""
from __future__ import annotations

import dataclasses
import functools
import os
import platform
import shutil
import tempfile
import threading
import time
from datetime import datetime
from typing import Optional

import zmq

from bert_serving.client import __version__
from bert_serving.client.errors import BertServingError
from bert_serving.client.protocol import PROTOCOL_VERSION, WIRE_RELEASE, Command, pack_request
from bert_serving.client.security import CurveKeys, secure_client_socket

from .config import EngineConfig, PoolingStrategy, ServerConfig
from .cpu import available_cores
from .errors import ConfigError, StartError
from .engine.devices import (batch_token_budget, cpu_oversubscription, cpu_threads, plan_devices,
                             planned_layer_shards, session_threads)
from .engine.features import token_counts
from .engine.graph import fingerprint, graph_layer_shards, prepare_graph, tensorflow_version
from .engine.tokenization import BertTokenizer
from .log import get_logger
from .launcher import ChildProcess
from .pipeline.request_queue import SchedulerConfig
from .pipeline.scheduler import Scheduler
from .pipeline.sink import SinkConfig
from .pipeline.supervisor import Supervisor
from .pipeline.ventilator import Addresses, Ventilator
from .pipeline.worker import WorkerConfig, worker_spec
from .security import AuthConfig, authenticator, bind_address, local_peer_keys, secure_server_socket

__all__ = ['BertServer']

SINK_START_SECONDS = 60.0
STOP_SECONDS = 5.0  # children get this long to stop after the drain, before SIGKILL
MAX_RESTARTS = 5  # worker replacements within RESTART_WINDOW before the server gives up
RESTART_WINDOW = 60.0
# Words whose pieces the ventilator's tokenizer keeps (it only counts them, to sort large requests):
# 65,536 rare words took the front from 35 to 133 MiB.
VENTILATOR_WORD_CACHE = 4096


def _json_safe(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return str(value)  # enums (pooling_strategy) go out by name


class BertServer(threading.Thread):
    """The whole service. A thread: ``start()``, ``join()``, ``close()``; also a context manager.

    The graph is prepared (built or taken from the cache) in the constructor, so
    model and flag errors are raised here, before any process starts. The thread is not a
    daemon: a script that calls ``start()`` and ends keeps serving until the server is shut down.

    Attributes:
        is_ready: set once every worker has loaded the model.
        failure: why the server stopped on its own, or None.
        processes: the child processes (sink, workers, proxy), each with name, pid, is_alive().
    """

    def __init__(self, args=None, *, server: Optional[ServerConfig] = None, engine: Optional[EngineConfig] = None):
        """Either ``BertServer(args)``, with the parsed flags of ``bert-serving-start`` as the
        original's recipe has it, or ``BertServer(server=ServerConfig(...), engine=EngineConfig(...))``
        (a config left out takes its defaults).

        Raises:
            ConfigError: a flag is wrong, or the http extra is missing for ``http_port``.
            ModelError: the model cannot be read or its graph built.
        """
        super().__init__(name='VENTILATOR', daemon=False)
        if args is not None:
            if server is not None or engine is not None:
                raise TypeError('give BertServer the parsed flags or the configs, not both')
            server, engine = ServerConfig.from_namespace(args), EngineConfig.from_namespace(args)
        self.server_config = cfg = server or ServerConfig()
        engine = engine or EngineConfig()
        self.logger = get_logger('VENTILATOR', cfg.verbose)
        self.auth = AuthConfig.from_server(cfg)  # checks -auth_dir and -bind now, not at the first peer
        if cfg.port_worker is not None:
            self.auth.check_worker_keys()
        # Tags the pieces handed to workers (messages.piece_tag): only the ventilator and the sink hold it.
        self.tag_secret = os.urandom(32)
        # The HTTP proxy connects to the server over TCP: with Curve on, it gets a key pair of its own.
        self.proxy_keys = local_peer_keys(self.auth)
        self.proxy_config = None
        if cfg.http_port is not None:
            try:
                from .http import ProxyConfig
            except ImportError as e:
                raise ConfigError(f'-http_port needs the http extra: pip install "bert-serving-server[http]", '
                                  f'or leave -http_port out ({e})') from e
            ProxyConfig.from_server(cfg, engine, curve_keys=self.proxy_keys)  # a wrong token flag fails before the model
        self.devices = plan_devices(cfg.num_worker, cfg.cpu, cfg.device_map, self.logger)
        # Devices first: where the workers run decides -fp16's compute dtype and how the blocks
        # are split (on the CPU cores of a worker), both part of the graph.
        on_gpu = any(d >= 0 for d in self.devices)
        num_cpu = sum(1 for d in self.devices if d < 0)
        self.cpu_threads = cpu_threads(num_cpu)
        oversubscribed = cpu_oversubscription(num_cpu, self.cpu_threads, available_cores())
        if oversubscribed:
            self.logger.warning('%s', oversubscribed)
        self.engine_config = dataclasses.replace(
            engine, on_gpu=on_gpu,
            layer_shards=planned_layer_shards(self.cpu_threads, on_gpu))
        self.graph = None
        if self.engine_config.engine != 'fake':
            self.graph = prepare_graph(self.engine_config, get_logger('GRAPH', cfg.verbose), isolated=True)
        if cfg.http_port is not None:  # the proxy counts /v1/embeddings tokens with the model's vocabulary
            self.proxy_config = ProxyConfig.from_server(
                cfg, engine, curve_keys=self.proxy_keys, vocab_file='' if self.graph is None else self.graph.files.vocab_path,
                max_position_embeddings=512 if self.graph is None else self.graph.bert_config.max_position_embeddings)
        self.batch_tokens = [batch_token_budget(d, cfg.max_batch_tokens, cfg.max_batch_size,
                                                self.engine_config.max_seq_len) for d in self.devices]
        self._log_worker_plan()
        # What every worker, local or remote, must match to join.
        self.fingerprint = fingerprint(self.engine_config, None if self.graph is None else self.graph.files)
        self.is_ready = threading.Event()
        self.failure: Optional[str] = None
        self._stopping = threading.Event()
        self._ipc_dir = tempfile.mkdtemp(prefix='bert-serving-')
        self.addresses = Addresses(port=cfg.port, backend=f'ipc://{self._ipc_dir}/backend',
                                   feedback=f'ipc://{self._ipc_dir}/feedback', sink=f'ipc://{self._ipc_dir}/sink',
                                   port_worker=cfg.port_worker, port_worker_sink=cfg.port_worker_sink)
        self.scheduler = Scheduler(SchedulerConfig(
            num_worker=cfg.num_worker, max_batch_size=cfg.max_batch_size,
            priority_batch_size=cfg.priority_batch_size, max_queue_rows=cfg.max_queue_rows,
            max_queue_bytes=cfg.max_queue_bytes, reply_row_bytes=self._reply_row_bytes(),
            max_reply_bytes=cfg.max_reply_bytes,
            batch_timeout=cfg.batch_timeout, heartbeat_timeout=cfg.heartbeat_timeout),
            lengths=None if self.graph is None else functools.partial(token_counts, BertTokenizer(
                self.graph.files.vocab_path, self.engine_config.do_lower_case, word_cache_size=VENTILATOR_WORD_CACHE)))
        self.supervisor = Supervisor(self._spawn_worker, self.logger, MAX_RESTARTS, RESTART_WINDOW)
        self.start_time = datetime.now()
        # SHOW_CONFIG names every flag as 1.10 did, secrets hidden (ServerConfig.flags).
        self.status_args = {k: _json_safe(v) for k, v in sorted({**engine.flags(), **cfg.flags()}.items())}
        self.status_static = {
            # 1.10 clients refuse any server_version but their own: report the wire release we speak.
            'python_version': platform.python_version(), 'server_version': WIRE_RELEASE,
            'server_release': __version__, 'protocol_version': PROTOCOL_VERSION,
            'tensorflow_version': tensorflow_version(), 'pyzmq_version': zmq.pyzmq_version(),
            'zmq_version': zmq.zmq_version(), 'server_start_time': str(self.start_time),
            'ventilator -> worker': [self.addresses.backend] + (
                [bind_address(self.auth, cfg.port_worker)] if cfg.port_worker is not None else []),
            'curve': self.auth.enabled,
            'worker -> sink': self.addresses.sink,
            'ventilator <-> sink': self.addresses.sink, 'num_concurrent_socket': 1,
            'worker_devices': {f'WORKER-{i}': 'cpu' if d < 0 else f'gpu:{d}' for i, d in enumerate(self.devices)},
            'worker_max_batch_tokens': {f'WORKER-{i}': n for i, n in enumerate(self.batch_tokens)},
            **self._model_status(),
        }

    def _log_worker_plan(self) -> None:
        """The start-up table of the local workers: device, CPU threads, batch-token budget, and
        what the matrix products compute in (EngineConfig.compute_summary)."""
        shards = graph_layer_shards(self.engine_config, self.graph)
        compute = self.engine_config.compute_summary
        rows = [f'{"WORKER":>10}  {"DEVICE":<7}{"THREADS (intra x inter)":<26}{"MAX_BATCH_TOKENS":<18}COMPUTE']
        for i, (device, tokens) in enumerate(zip(self.devices, self.batch_tokens)):
            threads = '%d x %d' % session_threads(self.cpu_threads, shards) if device < 0 else '-'
            rows.append(f'{"WORKER-%d" % i:>10}  {"cpu" if device < 0 else "gpu:%d" % device:<7}{threads:<26}'
                        f'{tokens:<18}{compute}')
        self.logger.info('workers:\n%s', '\n'.join(rows))
        if self.engine_config.bf16_emulated:
            self.logger.warning('-bf16 on this CPU: %s; leave -bf16 out for float32', compute)

    def _reply_row_bytes(self) -> int:
        """The most bytes one input adds to a reply: its vector, or with NONE pooling its
        max_seq_len vectors (max_position_embeddings when max_seq_len is NONE)."""
        e = self.engine_config
        row = self._model_status()['output_dim'] * (2 if e.fp16 else 4)
        if e.pooling_strategy == PoolingStrategy.NONE:
            longest = e.max_seq_len or (512 if self.graph is None else self.graph.bert_config.max_position_embeddings)
            row *= longest
        return row

    def _max_result_bytes(self) -> int:
        """The largest frame a remote worker may send the sink: the vectors of one full batch (or of
        the largest reply, if smaller), or a RESULT's header (the JSON of up to one piece a row, each
        with its word pieces), whichever is larger."""
        cfg = self.server_config
        vectors = min(cfg.max_reply_bytes, cfg.max_batch_size * self.scheduler.cfg.reply_row_bytes)
        longest = self.engine_config.max_seq_len or 512
        # 64 bytes a word piece in JSON; a piece's other fields, its identity escaped (\u00XX), 2 KB.
        header = cfg.max_batch_size * (longest * 64 + 2048)
        return max(vectors, header) + (1 << 20)

    def _model_status(self) -> dict:
        if self.graph is None:
            from .engine.fake import FAKE_WIDTH
            return {'model_dir': 'fake', 'model_layout': 'fake', 'num_hidden_layers': 0,
                    'hidden_size': FAKE_WIDTH, 'output_dim': FAKE_WIDTH}
        from .engine.modeling import output_width
        bc = self.graph.bert_config
        return {'model_dir': self.graph.files.model_dir, 'model_layout': self.graph.files.layout,
                'num_hidden_layers': bc.num_hidden_layers, 'hidden_size': bc.hidden_size,
                'output_dim': output_width(self.engine_config, bc)}

    @property
    def processes(self) -> list:
        return self.supervisor.processes

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def request_stop(self) -> None:
        """Starts a graceful stop: intake closes, work in progress gets ``-drain_timeout``."""
        self._stopping.set()

    def mark_ready(self) -> None:
        if not self.is_ready.is_set():
            self.logger.info('all set, ready to serve requests!')
        self.is_ready.set()

    def fatal(self, reason: str) -> None:
        if self.failure is None:
            self.logger.error('shutting down: %s', reason)
            self.failure = reason
        self._stopping.set()

    def run(self) -> None:
        cfg = self.server_config
        extra_keys = () if self.proxy_keys is None else (self.proxy_keys.public,)
        try:
            with zmq.Context() as ctx, authenticator(ctx, self.auth, extra_keys):
                sink = ChildProcess('SINK', 'bert_serving.server.pipeline.sink', dataclasses.asdict(
                    SinkConfig(self.addresses.sink, cfg.port_out, feedback_addr=self.addresses.feedback,
                                 port_worker_sink=cfg.port_worker_sink, bind_host=self.auth.bind_host,
                                 auth_dir=self.auth.auth_dir, extra_public_keys=extra_keys,
                                 tag_secret=self.tag_secret.hex(), max_result_bytes=self._max_result_bytes(),
                                 verbose=cfg.verbose)))
                sink.start()
                self.supervisor.add_service(sink, 'see the SINK log')
                # The sink binds port_out; if it cannot, it exits, and without this wait the server
                # would still report ready and never answer anyone.
                if not sink.wait_ready(SINK_START_SECONDS):
                    ports = f'port_out {cfg.port_out}' + (f' or port_worker_sink {cfg.port_worker_sink}'
                                                          if cfg.port_worker_sink is not None else '')
                    raise StartError(f'the sink stopped while starting: is {ports} already in use? '
                                     '(see the SINK log)')
                self._start_http()
                Ventilator(self, self.scheduler, self.supervisor, self.addresses, num_worker=cfg.num_worker,
                           max_request_bytes=cfg.max_request_bytes, request_timeout=cfg.request_timeout,
                           drain_timeout=cfg.drain_timeout, fingerprint=self.fingerprint,
                           show_tokens_to_client=cfg.show_tokens_to_client, auth=self.auth,
                           secure=functools.partial(secure_server_socket, auth=self.auth),
                           tag_secret=self.tag_secret).run(ctx)
        except zmq.ZMQError as e:
            if e.errno == zmq.EADDRINUSE:  # the ventilator binds -port (and -port_worker) in this thread
                self.fatal(f'{e}: -port {cfg.port}' + (f' or -port_worker {cfg.port_worker}' if cfg.port_worker else '')
                           + ' is held by another program, maybe another server: stop it (bert-serving-terminate '
                           '-port N) or start this one with other ports')
            else:
                self.fatal(f'ZMQError: {e}')
        except Exception as e:  # our own errors' messages stand alone
            self.fatal(str(e) if isinstance(e, BertServingError) else f'{type(e).__name__}: {e}')
        finally:
            self.supervisor.stop_all(STOP_SECONDS)
            shutil.rmtree(self._ipc_dir, ignore_errors=True)
            self.logger.info('terminated')

    def _spawn_worker(self, worker_id: int, generation: int):
        device = self.devices[worker_id]
        intra, inter = session_threads(self.cpu_threads, graph_layer_shards(self.engine_config, self.graph)) \
            if device < 0 else (0, 0)
        cfg = self.server_config
        config = WorkerConfig(
            name=f'WORKER-{worker_id}', identity=f'worker-{worker_id}-{generation}', fingerprint=self.fingerprint,
            device_id=device, backend_addr=self.addresses.backend, local=True,
            intra_op_threads=intra, inter_op_threads=inter,
            gpu_memory_fraction=None if device < 0 else cfg.gpu_memory_fraction,
            credit=2 if cfg.prefetch_size > 0 else 1, max_batch_size=cfg.max_batch_size,
            max_batch_tokens=self.batch_tokens[worker_id], verbose=cfg.verbose)
        proc = ChildProcess(config.name, 'bert_serving.server.pipeline.worker',
                            worker_spec(self.engine_config, config, self.graph))
        proc.start()
        return config.identity.encode('latin-1'), proc

    def _start_http(self) -> None:
        if self.proxy_config is None:
            return
        proxy = ChildProcess('PROXY', 'bert_serving.server.http.proxy', dataclasses.asdict(self.proxy_config))
        proxy.start()
        self.supervisor.add_service(proxy, f'is -http_port {self.server_config.http_port} already in use? '
                                           '(see the PROXY log)')

    def close(self) -> None:
        """Stops the server gracefully (see ``-drain_timeout``) and frees the ports. Safe to call
        more than once."""
        self.logger.info('shutting down...')
        self._stopping.set()
        if self.is_alive():
            self.join(timeout=self.server_config.drain_timeout + STOP_SECONDS + 15)
        elif self.processes:
            self.supervisor.stop_all(STOP_SECONDS)

    def __enter__(self) -> 'BertServer':
        """Starts the server and returns once every worker is ready.

        Raises:
            StartError: the server stopped while starting (the message says why; a RuntimeError).
        """
        self.start()
        while not self.is_ready.wait(0.1):
            if not self.is_alive():
                self.join()
                raise StartError(f'the server stopped while starting: {self.failure or "see the log"}')
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- introspection -----------------------------------------------------------------------
    def describe(self, client: bytes, statistic: Optional[dict], snapshot: dict) -> dict:
        """The SHOW_CONFIG reply (and SHOW_STATUS, with ``statistic``), from a scheduler snapshot."""
        info = {
            'client': client.decode('latin-1'),
            'num_process': len(self.processes),
            'server_current_time': str(datetime.now()),
            'ready': self.is_ready.is_set(),
            **self.status_args,
            **self.status_static,
        }
        if statistic is not None:
            info['statistic'] = statistic
            info.update(snapshot)
        return info

    @staticmethod
    def shutdown(args=None, *, ip: str = 'localhost', port: Optional[int] = None, timeout: int = 5000,
                 server_key: Optional[str] = None, client_key: Optional[str] = None) -> bool:
        """Asks a running server to stop and waits until its port is free.

        Both forms of the original work::

            BertServer.shutdown(get_shutdown_parser().parse_args(['-port', '5555']))
            BertServer.shutdown(port=5555)

        Args:
            args: parsed ``bert-serving-terminate`` flags (``ip``, ``port``, ``timeout``, ``server_key``,
                ``client_key``); or None and the keywords instead.
            ip: the server's address.
            port: the server's ``-port``.
            timeout: milliseconds to wait for the server to take the request and free its port.
            server_key / client_key: for a server with ``-auth_dir``: its public ``server.key`` and this
                peer's ``NAME.key_secret`` (default: ``$BERT_SERVING_SERVER_KEY`` / ``$BERT_SERVING_CLIENT_KEY``).

        Returns:
            True if the port was freed in time (False also when the server refused our key).

        Raises:
            ConfigError: no port given. KeyFileError: a key file is wrong.
        """
        if args is not None:
            ip = getattr(args, 'ip', ip)
            port = getattr(args, 'port', port)
            timeout = getattr(args, 'timeout', timeout)
            server_key = getattr(args, 'server_key', server_key)
            client_key = getattr(args, 'client_key', client_key)
        if port is None:
            raise ConfigError('BertServer.shutdown needs the server\'s port, e.g. BertServer.shutdown(port=5555)')
        keys = CurveKeys.from_files(server_key, client_key)
        with zmq.Context() as ctx:
            sock = ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, timeout)
            sock.setsockopt(zmq.SNDTIMEO, timeout)
            # Queue only on a completed connection: with nothing listening, send times out
            # instead of "succeeding" into a queue while the free port reads as a stopped server.
            sock.setsockopt(zmq.IMMEDIATE, 1)
            secure_client_socket(sock, keys)
            try:
                sock.connect(f'tcp://{ip}:{port}')
                sock.send_multipart(pack_request(b'terminator', Command.TERMINATE, 0, 0))
            except zmq.Again:
                return False
            finally:
                sock.close()
        return _wait_port_free(ip, port, timeout / 1000)


def _wait_port_free(ip: str, port: int, seconds: float) -> bool:
    import socket
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((ip, port)) != 0:
                return True
        time.sleep(0.1)
    return False
