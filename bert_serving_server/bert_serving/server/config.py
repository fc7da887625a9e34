"""Typed, frozen configuration of the engine (model, tokenizer, graph).

The command line only fills these in; every process receives the dataclass
it needs rather than the whole argparse namespace.
"""
from __future__ import annotations

import enum
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Optional, Tuple

from . import cpu
from .errors import ConfigError
from .log import redact_args

__all__ = ['PoolingStrategy', 'EngineConfig', 'ServerConfig', 'DEFAULT_MAX_SEQ_LEN', 'parse_max_seq_len', 'field_default']

DEFAULT_MAX_SEQ_LEN = 25
ENGINES = ('tensorflow', 'fake')


def field_default(cls, name: str) -> Any:
    """The default of field ``name`` of the config dataclass ``cls``.

    The dataclasses below are the one place a default is written: the command-line parser (args.py),
    the pipeline's own configs and the engine read theirs from here.

    Raises:
        KeyError: ``cls`` has no such field, or it has no default.
    """
    for f in fields(cls):
        if f.name == name:
            if f.default is not MISSING:
                return f.default
            if f.default_factory is not MISSING:
                return f.default_factory()
            break
    raise KeyError(f'{cls.__name__}.{name} has no default')


class PoolingStrategy(enum.Enum):
    """How token vectors of the pooled layer(s) become one vector per input.

    The integer values follow the original bert-as-service; FIRST_TOKEN and
    LAST_TOKEN are aliases of CLS_TOKEN and SEP_TOKEN.
    """
    NONE = 0
    REDUCE_MAX = 1
    REDUCE_MEAN = 2
    REDUCE_MEAN_MAX = 3
    CLS_TOKEN = 4
    FIRST_TOKEN = 4
    SEP_TOKEN = 5
    LAST_TOKEN = 5
    CLS_POOLED = 6
    CLASSIFICATION = 7
    REGRESSION = 8

    def __str__(self) -> str:
        return self.name

    @classmethod
    def from_string(cls, name: str) -> 'PoolingStrategy':
        """Parses a strategy name (case-insensitive), e.g. ``REDUCE_MEAN``.

        Raises:
            ValueError: the name is not a strategy; the message lists them all.
        """
        if isinstance(name, cls):
            return name
        try:
            return cls[str(name).strip().upper()]
        except KeyError:
            names = ', '.join(cls.__members__)
            raise ConfigError(f'unknown pooling_strategy {name!r}; choose one of: {names}') from None

    @property
    def needs_pooler(self) -> bool:
        return self in (PoolingStrategy.CLS_POOLED, PoolingStrategy.CLASSIFICATION,
                        PoolingStrategy.REGRESSION)

    @property
    def needs_head(self) -> bool:
        return self in (PoolingStrategy.CLASSIFICATION, PoolingStrategy.REGRESSION)


def parse_max_seq_len(value) -> Optional[int]:
    """Parses ``-max_seq_len``: an int greater than 3, or NONE for "longest input".

    Raises:
        ValueError: the value is neither NONE nor an int > 3.
    """
    if value is None:
        return None
    if isinstance(value, str) and value.strip().upper() in ('NONE', ''):
        return None
    try:
        ivalue = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f'max_seq_len must be an integer greater than 3 or NONE, got {value!r}') from None
    if ivalue <= 3:
        raise ConfigError(f'max_seq_len must be greater than 3 (room for [CLS], [SEP] and a token), '
                         f'got {ivalue}; use NONE for "longest input in the request"')
    return ivalue


@dataclass(frozen=True)
class EngineConfig:
    """Everything that decides which vectors come out for a given input.

    Attributes:
        model_dir: BERT directory (Google TF checkpoint or Hugging Face layout).
            None means the bundled all-MiniLM-L6-v2.
        tuned_model_dir: the directory of a fine-tuned checkpoint; when set, every tensor comes
            from ``tuned_model_dir/ckpt_name`` and only the config and vocab from model_dir.
        ckpt_name: checkpoint prefix of the Google layout.
        config_name: JSON config file name of the Google layout.
        graph_tmp_dir: where frozen graphs are cached; None is the user cache dir.
        max_seq_len: tokens per input incl. [CLS]/[SEP]; None = longest input of
            the request (capped at max_position_embeddings).
        do_lower_case: lower-case and strip accents (False with -cased_tokenization).
        pooling_layer: transformer blocks to pool; -1 is the last. Concatenated in order.
        pooling_strategy: see PoolingStrategy.
        mask_cls_sep: set the input mask to 0 at [CLS] and [SEP]: attention skips them as keys
            and pooling skips them.
        no_special_token: pre-tokenized input gets no [CLS]/[SEP].
        no_position_embeddings: do not add position embeddings.
        num_labels: labels K of the CLASSIFICATION head (REGRESSION always has one unit).
        fp16: return float16 vectors; the graph computes in the dtype ``compute_dtype`` picks.
        bf16: compute in bfloat16 (fast on CPUs with AVX512-BF16 / AMX); float32 output.
        on_gpu: the workers run on a GPU. Nobody sets it on the command line: BertServer sets it
            from its device plan before it prepares the graph, since -cpu alone does not say
            whether a GPU was found. It only matters with fp16 (see ``compute_dtype``).
        xla: compile the graph with XLA.
        layer_shards: split each transformer block into this many independent parts (groups of
            heads and feed-forward units) that TensorFlow runs side by side on its inter-op
            threads; the server sets it from the CPU cores of a worker (see engine.devices). The
            vectors are the same up to float rounding.
        fixed_embed_length: with NONE pooling and max_seq_len NONE, pad the
            token axis to max_position_embeddings.
        engine: ``tensorflow`` (the model), or ``fake``, a numpy stand-in for testing the
            pipeline without TensorFlow (see engine/fake.py).
        fake_row_seconds: the fake engine sleeps this long per input of each call, to stand in
            for a real model's speed (ignored by TensorFlow).
    """
    model_dir: Optional[str] = None
    tuned_model_dir: Optional[str] = None
    ckpt_name: str = 'bert_model.ckpt'
    config_name: str = 'bert_config.json'
    graph_tmp_dir: Optional[str] = None
    max_seq_len: Optional[int] = DEFAULT_MAX_SEQ_LEN
    do_lower_case: bool = True
    pooling_layer: Tuple[int, ...] = (-2,)
    pooling_strategy: PoolingStrategy = PoolingStrategy.REDUCE_MEAN
    mask_cls_sep: bool = False
    no_special_token: bool = False
    no_position_embeddings: bool = False
    num_labels: int = 2
    fp16: bool = False
    bf16: bool = False
    on_gpu: bool = False
    xla: bool = False
    layer_shards: int = 1
    fixed_embed_length: bool = False
    engine: str = 'tensorflow'
    fake_row_seconds: float = 0.0
    verbose: bool = False

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ConfigError(f'engine must be one of {", ".join(ENGINES)}, got {self.engine!r}')
        object.__setattr__(self, 'max_seq_len', parse_max_seq_len(self.max_seq_len))
        object.__setattr__(self, 'pooling_strategy', PoolingStrategy.from_string(self.pooling_strategy))
        layers = self.pooling_layer
        if isinstance(layers, int):
            layers = (layers,)
        try:
            layers = tuple(int(x) for x in layers)
        except (TypeError, ValueError):
            raise ConfigError(f'pooling_layer must be one or more integers, got {self.pooling_layer!r}') from None
        if not layers:
            raise ConfigError('pooling_layer needs at least one layer, e.g. -2')
        object.__setattr__(self, 'pooling_layer', layers)
        if self.fp16 and self.bf16:
            raise ConfigError('choose one of fp16 and bf16')
        if int(self.num_labels) < 1:
            raise ConfigError(f'num_labels must be >= 1, got {self.num_labels}')
        if int(self.layer_shards) < 1:
            raise ConfigError(f'layer_shards must be >= 1, got {self.layer_shards}')
        if not float(self.fake_row_seconds) >= 0:
            raise ConfigError(f'fake_row_seconds must be >= 0, got {self.fake_row_seconds}')

    @classmethod
    def from_namespace(cls, args) -> 'EngineConfig':
        """Builds the config from an argparse namespace, ignoring unrelated fields."""
        values = {}
        for f in fields(cls):
            if hasattr(args, f.name):
                values[f.name] = getattr(args, f.name)
        return cls(**values)

    def flags(self) -> dict:
        """The fields that are command-line flags (not ``on_gpu`` and ``layer_shards``, which the
        server decides), by flag name: for the start-up table and SHOW_CONFIG."""
        return {k: v for k, v in asdict(self).items() if k not in ('on_gpu', 'layer_shards')}

    def to_json(self) -> dict:
        """The fields as JSON values (the strategy as a string), which ``EngineConfig(**d)`` reads
        back: how a worker or a graph builder in another process gets its config."""
        return json.loads(json.dumps(asdict(self), default=str))

    @property
    def head_width(self) -> Optional[int]:
        """Units of the fine-tuned head: K for CLASSIFICATION, 1 for REGRESSION, else None."""
        if self.pooling_strategy == PoolingStrategy.CLASSIFICATION:
            return int(self.num_labels)
        if self.pooling_strategy == PoolingStrategy.REGRESSION:
            return 1  # run_classifier's regression head has one output, whatever -num_labels says
        return None

    @property
    def compute_dtype(self) -> str:
        """The dtype of the graph's matrix products: 'float32', 'bfloat16' or 'float16'.

        -bf16 is bfloat16 everywhere. -fp16 is float16 on a GPU; on a CPU float16 arithmetic
        is emulated and slow, so there it is bfloat16 where the CPU has AVX512-BF16 or AMX and
        float32 elsewhere. The answer depends on this machine's CPU, so it, not the flags, goes
        into the graph cache key.
        """
        if self.bf16:
            return 'bfloat16'
        if not self.fp16:
            return 'float32'
        if self.on_gpu:
            return 'float16'
        return 'bfloat16' if cpu.cpu_has_fast_bf16() else 'float32'

    @property
    def fused_layer_norm(self) -> bool:
        """True when the graph's wide tower (modeling.build_graph_def) writes its layer norms in the
        form TensorFlow's oneDNN remapper turns into one ``_MklLayerNorm`` kernel: a CPU graph where
        oneDNN is on (engine.devices). Elsewhere that form would run as a slow generic batch norm,
        so the graph keeps the plain one."""
        return not self.on_gpu and cpu.onednn_enabled()

    @property
    def bf16_emulated(self) -> bool:
        """True for bfloat16 products on a CPU without AVX512-BF16 or AMX (only -bf16 asks for that):
        emulated, and slower than float32."""
        return self.compute_dtype == 'bfloat16' and not self.on_gpu and not cpu.cpu_has_fast_bf16()

    @property
    def compute_summary(self) -> str:
        """What the matrix products run in, for the start-up table: e.g. 'float32', 'bfloat16
        (AVX512-BF16)', 'bfloat16, emulated: ...' (see bf16_emulated); ', float16 out' for -fp16."""
        dtype = self.compute_dtype
        out = ', float16 out' if self.fp16 and dtype != 'float16' else ''
        if self.bf16_emulated:
            return f'bfloat16, emulated: no AVX512-BF16/AMX, slower than float32{out}'
        if dtype == 'bfloat16' and not self.on_gpu:
            return f'bfloat16 ({cpu.fast_bf16_name()}){out}'
        return dtype + out

    @property
    def output_dtype(self) -> str:
        """The dtype of the vectors clients get: 'float16' with -fp16 (as in the original), else 'float32'."""
        return 'float16' if self.fp16 else 'float32'

    def _shape_fields(self) -> dict:
        """The flags that decide which layers are pooled, how, and into what."""
        return {
            'pooling_layer': list(self.pooling_layer),
            'pooling_strategy': self.pooling_strategy.name,
            'mask_cls_sep': self.mask_cls_sep,
            'no_position_embeddings': self.no_position_embeddings,
            'head_width': self.head_width,
            'output_dtype': self.output_dtype,
        }

    def output_key_fields(self) -> dict:
        """The flags that decide which vectors come out for an input, whatever the device: part of
        the fingerprint a remote worker must share with its server."""
        return {**self._shape_fields(), 'max_seq_len': self.max_seq_len, 'do_lower_case': self.do_lower_case,
                'no_special_token': self.no_special_token, 'fixed_embed_length': self.fixed_embed_length,
                'engine': self.engine}

    def graph_key_fields(self) -> dict:
        """The fields that shape the frozen graph (part of its cache key)."""
        return {**self._shape_fields(), 'compute_dtype': self.compute_dtype, 'xla': self.xla,
                'layer_shards': int(self.layer_shards), 'fused_layer_norm': self.fused_layer_norm}


@dataclass(frozen=True)
class ServerConfig:
    """How the service is laid out: ports, workers, devices and batching.

    Attributes:
        port: clients push requests here (the ventilator's PULL).
        port_out: results are published here (the sink's PUB).
        http_port: if set, an HTTP proxy listens here.
        http_max_connect: HTTP requests in flight before the proxy refuses more.
        cors: Access-Control-Allow-Origin of the HTTP proxy.
        num_worker: worker processes, each holding one copy of the graph.
        max_batch_size: most sequences in one batch for a worker.
        max_batch_tokens: most padded tokens (sequences x longest) in one model call; None = by
            device (engine.devices.batch_token_budget).
        priority_batch_size: requests with at most this many sequences jump the queue.
        prefetch_size: batches a worker may hold beyond the one it computes (0 = none).
        cpu: run on CPU even where a GPU exists.
        device_map: GPU ids to place workers on, reused round-robin.
        gpu_memory_fraction: share of a GPU's memory each worker may take.
        show_tokens_to_client: send the word pieces back with every result.
        max_request_bytes: largest request payload accepted.
        max_queue_bytes: most payload bytes of accepted requests not computed yet; more is refused
            as busy, except one request bigger than the queue at a time.
        max_reply_bytes: largest reply a request may produce (checked before it is computed).
        request_timeout: seconds an accepted request may go without progress (a piece of it reaching
            the sink) before it fails (None: no bound).
        max_queue_rows: most inputs of accepted requests not computed yet; more is refused as busy,
            except one request bigger than the queue at a time.
        drain_timeout: seconds work in progress gets to finish when the server stops.
        heartbeat_timeout: seconds of silence after which a worker is replaced.
        batch_timeout: seconds a worker may hold one batch before it is replaced.
        port_worker: if set, remote workers (bert-serving-worker) connect here.
        port_worker_sink: where remote workers send results (default port_worker + 1).
        bind_host: the interface every TCP port binds ('*' = all, as the original).
        http_host: the address the HTTP proxy listens on (None: that of ``bind_host``).
        http_max_inputs: most texts in one HTTP request.
        http_token, http_token_file: the bearer token the HTTP proxy requires, or the file whose
            first line holds it (at most one of them).
        http_secure_cookie: mark the dashboard's session cookie Secure even on plain HTTP.
        metrics_public: with a token, /metrics answers without it.
        auth_dir: CurveZMQ on every TCP port with the keys in this folder (security.AuthConfig).
        remote_terminate, no_remote_terminate: whether a TERMINATE from another machine is obeyed
            (security.AuthConfig.from_server decides from these and ``auth_dir``).
        verbose: debug logging.
    """
    port: int = 5555
    port_out: int = 5556
    http_port: Optional[int] = None
    http_max_connect: int = 10
    cors: str = '*'
    num_worker: int = 1
    max_batch_size: int = 256
    max_batch_tokens: Optional[int] = None
    priority_batch_size: int = 16
    prefetch_size: int = 10
    cpu: bool = False
    device_map: Tuple[int, ...] = ()
    gpu_memory_fraction: float = 0.5
    show_tokens_to_client: bool = False
    max_request_bytes: int = 64 * 1024 * 1024
    request_timeout: Optional[float] = 300.0
    max_queue_rows: int = 200_000
    max_queue_bytes: int = 512 * 1024 * 1024
    max_reply_bytes: int = 1024 * 1024 * 1024
    drain_timeout: float = 10.0
    heartbeat_timeout: float = 10.0
    batch_timeout: float = 60.0
    port_worker: Optional[int] = None
    port_worker_sink: Optional[int] = None
    bind_host: str = '*'
    http_host: Optional[str] = None
    http_max_inputs: int = 2048
    http_token: Optional[str] = field(default=None, repr=False)
    http_token_file: Optional[str] = None
    http_secure_cookie: bool = False
    metrics_public: bool = False
    auth_dir: Optional[str] = None
    remote_terminate: bool = False
    no_remote_terminate: bool = False
    verbose: bool = False

    def __post_init__(self):
        if self.remote_terminate and self.no_remote_terminate:
            raise ConfigError('give -remote_terminate or -no_remote_terminate, not both')
        if self.request_timeout is not None and self.request_timeout <= 0:
            object.__setattr__(self, 'request_timeout', None)  # 0: no bound, as -timeout -1 on a client
        if self.port_worker is not None and self.port_worker_sink is None:
            object.__setattr__(self, 'port_worker_sink', self.port_worker + 1)
        if self.num_worker == 0 and self.port_worker is None:
            raise ConfigError('num_worker 0 (a pure front) needs -port_worker, so that remote workers can join')
        checks = [('num_worker', self.num_worker >= 0), ('max_batch_size', self.max_batch_size >= 1),
                  ('max_queue_rows', self.max_queue_rows >= 1), ('drain_timeout', self.drain_timeout >= 0),
                  ('max_request_bytes', self.max_request_bytes >= 1024),
                  ('max_queue_bytes', self.max_queue_bytes >= 1), ('max_reply_bytes', self.max_reply_bytes >= 1024),
                  ('heartbeat_timeout', self.heartbeat_timeout > 0), ('batch_timeout', self.batch_timeout > 0),
                  ('max_batch_tokens', self.max_batch_tokens is None or self.max_batch_tokens >= 1),
                  ('priority_batch_size', self.priority_batch_size >= 0),
                  ('prefetch_size', self.prefetch_size >= 0),
                  ('http_max_connect', self.http_max_connect >= 1),
                  ('http_max_inputs', self.http_max_inputs >= 1)]
        for name, ok in checks:
            if not ok:
                floor = 'at least 1024' if name in ('max_request_bytes', 'max_reply_bytes') else \
                    '0 or more' if name in ('num_worker', 'priority_batch_size', 'prefetch_size',
                                                'drain_timeout') else 'positive'
                raise ConfigError(f'{name} must be {floor}, got {getattr(self, name)}')
        if not 0.0 < self.gpu_memory_fraction <= 1.0:
            raise ConfigError(f'gpu_memory_fraction must be in (0, 1], got {self.gpu_memory_fraction}')
        optional = ('http_port', 'port_worker', 'port_worker_sink')
        for name in ('port', 'port_out') + tuple(n for n in optional if getattr(self, n) is not None):
            value = getattr(self, name)
            if not 0 < value < 65536:
                raise ConfigError(f'{name} must be a TCP port (1-65535), got {value}')
        if self.port == self.port_out:
            raise ConfigError(f'port and port_out must differ, both are {self.port}')
        used = [(n, getattr(self, n)) for n in ('port', 'port_out') + optional if getattr(self, n) is not None]
        for i, (name, value) in enumerate(used):
            for other, other_value in used[i + 1:]:
                if value == other_value:
                    raise ConfigError(f'{name} and {other} must differ, both are {value}')
        try:
            object.__setattr__(self, 'device_map', tuple(int(d) for d in self.device_map))
        except (TypeError, ValueError):
            raise ConfigError(f'device_map must be GPU ids (integers), got {self.device_map!r}') from None

    @classmethod
    def from_namespace(cls, args) -> 'ServerConfig':
        """Builds the config from an argparse namespace, ignoring unrelated fields."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})

    def flags(self) -> dict:
        """Every field by flag name, secret ones (log.SECRET_FLAGS) that are set as ``***``: for the
        start-up table and SHOW_CONFIG, which every client may ask for."""
        return redact_args(asdict(self))
