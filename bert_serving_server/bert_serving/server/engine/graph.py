"""Freezes, optimises and caches the inference graph (``runner`` runs it).

A graph is cached on disk under a key that hashes the model files' bytes, the
graph-shaping flags, this module's format version and the TensorFlow version.
An unchanged restart loads the cached file; any change builds a new one.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Optional


from .checkpoint import BertConfig, ModelFiles, load_bert_config, load_weights, locate_model
from ..config import EngineConfig, PoolingStrategy
from ..errors import ConfigError, ModelError
from ..heap import heap_kept_while_building
from .modeling import NARROW_PREFIX, OUTPUT_NAME, build_graph_def, layer_shards, layers_to_compute, resolve_layers
from .tokenization import load_vocab

__all__ = ['FrozenGraph', 'prepare_graph', 'default_cache_dir', 'tensorflow_version', 'fingerprint',
           'graph_layer_shards']

GRAPH_FORMAT = 11  # bump when build_graph_def changes what it produces


def default_cache_dir() -> str:
    """``$BERT_SERVING_CACHE_DIR``, else ``$XDG_CACHE_HOME/bert-serving``, else ``~/.cache/bert-serving``."""
    env = os.environ.get('BERT_SERVING_CACHE_DIR')
    if env:
        return env
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'bert-serving')


@dataclass(frozen=True)
class FrozenGraph:
    """A frozen graph file on disk and what it was built from.

    Attributes:
        path: the serialized GraphDef.
        files: the model files.
        bert_config: the model architecture.
        from_cache: True if an earlier build was reused.
    """
    path: str
    files: ModelFiles
    bert_config: BertConfig
    from_cache: bool


def _file_digest(path: str) -> str:
    try:
        with open(path, 'rb') as f:
            return hashlib.file_digest(f, 'sha256').hexdigest()
    except OSError as e:
        raise ModelError(f'{path} cannot be read ({e.strerror})') from e


def tensorflow_version() -> str:
    """TensorFlow's version, read from package metadata so that a cache hit never imports it."""
    for dist in ('tensorflow', 'tensorflow-cpu', 'tensorflow-gpu', 'tf-nightly', 'tensorflow-intel'):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    import tensorflow as tf
    return tf.__version__


def cache_key(cfg: EngineConfig, files: ModelFiles) -> str:
    """Hash of the model bytes and every flag that shapes the graph."""
    h = hashlib.sha256()
    meta = {'format': GRAPH_FORMAT, 'tf': tensorflow_version(), 'flags': cfg.graph_key_fields(),
            'files': [(os.path.basename(p), _file_digest(p)) for p in files.content_files()]}
    h.update(json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()


def graph_layer_shards(cfg: EngineConfig, graph: Optional[FrozenGraph]) -> int:
    """How many parts each block of ``graph`` (built for ``cfg``) is split into; 1 without a graph."""
    return 1 if graph is None else layer_shards(cfg.layer_shards, graph.bert_config)


def fingerprint(cfg: EngineConfig, files: Optional[ModelFiles]) -> str:
    """What a remote worker must share with its server to serve the same vectors: the model files'
    bytes and the output-shaping flags (not the device, the TensorFlow version or the compute dtype).
    ``files`` is None for the fake engine."""
    meta = {'flags': cfg.output_key_fields(),
            'files': [] if files is None else [(os.path.basename(p), _file_digest(p)) for p in files.content_files()]}
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


def _special_ids(vocab_path: str):
    vocab = load_vocab(vocab_path)
    missing = [t for t in ('[CLS]', '[SEP]', '[UNK]', '[PAD]') if t not in vocab]
    if missing:
        raise ModelError(f'{vocab_path} lacks the special tokens {missing}; expected a BERT WordPiece vocab')
    return vocab['[CLS]'], vocab['[SEP]']


def _head_hint(cfg: EngineConfig) -> str:
    """What to change when a fine-tuned head has the wrong shape."""
    if cfg.pooling_strategy == PoolingStrategy.REGRESSION:
        return ('REGRESSION reads a 1-unit head as run_classifier.py saves for regression, '
                'whatever -num_labels says; use CLASSIFICATION for a head with several labels')
    return 'check -num_labels, which must equal the number of labels the head was trained with'


def _optimize(graph_def, logger: logging.Logger):
    """Runs Grappler's device-independent passes (constant folding, arithmetic)
    offline, so every worker start loads an already simplified graph."""
    from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, rewriter_config_pb2
    from tensorflow.python.grappler import tf_optimizer

    # Grappler reads the graph and the fetches from a MetaGraphDef; nothing else of what
    # export_meta_graph adds is used, and importing then exporting the graph to get one cost a
    # second and two copies of the ~90 MB of weights per build.
    meta = meta_graph_pb2.MetaGraphDef(graph_def=graph_def)
    fetch = meta.collection_def['train_op'].node_list.value
    fetch.extend([OUTPUT_NAME, NARROW_PREFIX + OUTPUT_NAME])
    config = config_pb2.ConfigProto()
    rw = config.graph_options.rewrite_options
    rw.optimizers.extend(['pruning', 'constfold', 'arithmetic', 'dependency'])
    rw.meta_optimizer_iterations = rewriter_config_pb2.RewriterConfig.ONE
    try:
        return tf_optimizer.OptimizeGraph(config, meta)
    except Exception as e:  # an optimisation failure must not stop serving
        logger.warning('graph optimisation skipped (%s); using the unoptimised graph', e)
        return graph_def


def prepare_graph(cfg: EngineConfig, logger: Optional[logging.Logger] = None, *,
                  isolated: bool = False) -> FrozenGraph:
    """Returns the frozen graph for ``cfg``, building and caching it if needed.

    ``isolated`` builds in a child process, so that this one never imports TensorFlow: a server's
    front process (ventilator, ~60 MiB) would otherwise keep the ~1.2 GB a build leaves behind.

    Raises:
        ModelError: a model file is missing, unreadable or mismatched.
        ConfigError: a flag does not fit the model (e.g. layer out of range).
    """
    logger = logger or logging.getLogger(__name__)
    files = locate_model(cfg, logger)
    bc = load_bert_config(files)
    resolve_layers(cfg, bc)  # validate before any heavy work
    if cfg.max_seq_len is not None and cfg.max_seq_len > bc.max_position_embeddings:
        raise ConfigError(f'max_seq_len {cfg.max_seq_len} exceeds max_position_embeddings '
                          f'{bc.max_position_embeddings} of {files.config_path}; use at most '
                          f'{bc.max_position_embeddings} or NONE')
    cls_id, sep_id = _special_ids(files.vocab_path)
    directory = os.path.abspath(cfg.graph_tmp_dir or default_cache_dir())
    try:
        os.makedirs(directory, exist_ok=True)  # before the build: fail fast on a bad cache dir
    except OSError as e:
        raise ConfigError(f'the graph cache {directory} cannot be created ({e.strerror}); set '
                          '-graph_tmp_dir or BERT_SERVING_CACHE_DIR to a writable directory') from e
    if cfg.fp16:
        logger.info('-fp16: computing in %s on %s, returning float16%s', cfg.compute_dtype,
                    'GPU' if cfg.on_gpu else 'CPU',
                    ' (this CPU lacks AVX512-BF16/AMX, and float16 arithmetic is slow on a CPU)'
                    if cfg.compute_dtype == 'float32' else '')
    key = cache_key(cfg, files)
    path = os.path.join(directory, f'bert-graph-{key[:32]}.pb')
    if os.path.isfile(path):
        logger.info('reusing the cached graph %s', path)
        return FrozenGraph(path, files, bc, True)

    if isolated:
        _build_in_child(cfg, logger)
        return FrozenGraph(path, files, bc, False)
    t0 = time.perf_counter()
    logger.info('building the graph (layout %s, %d of %d layers)...', files.layout,
                layers_to_compute(cfg, bc), bc.num_hidden_layers)
    with heap_kept_while_building():
        weights = load_weights(files, bc, num_layers=layers_to_compute(cfg, bc),
                               pooler=cfg.pooling_strategy.needs_pooler, head_labels=cfg.head_width,
                               head_hint=_head_hint(cfg))
        logger.info('loaded %d tensors in %.1fs, freezing and optimising...', len(weights),
                    time.perf_counter() - t0)
        graph_def = _optimize(build_graph_def(cfg, bc, weights, cls_id, sep_id), logger)
        del weights
        _write_graph(graph_def, directory, path)
    logger.info('graph built in %.1fs and cached at %s', time.perf_counter() - t0, path)
    return FrozenGraph(path, files, bc, False)


def _write_graph(graph_def, directory: str, path: str) -> None:
    """Writes the graph to ``path`` atomically: concurrent builders never see half a file."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix='.partial-', suffix='.pb')
        with os.fdopen(fd, 'wb') as f:
            f.write(graph_def.SerializeToString())
        os.replace(tmp, path)
    except OSError as e:
        raise ConfigError(f'the graph cannot be written to {directory} ({e.strerror}); set '
                          '-graph_tmp_dir or BERT_SERVING_CACHE_DIR to a writable directory') from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _build_in_child(cfg: EngineConfig, logger: logging.Logger) -> None:
    """Runs :func:`prepare_graph` for ``cfg`` in a new Python (:func:`main`) and waits for it; its
    log goes to the same stderr. A config or model error there is raised here, with its message."""
    from ..launcher import ChildProcess

    fd, error_path = tempfile.mkstemp(prefix='bert-serving-build-', suffix='.json')
    os.close(fd)
    try:
        child = ChildProcess('GRAPH', __name__, {'engine': cfg.to_json(), 'verbose': cfg.verbose,
                                                 'error_path': error_path})
        child.start()
        child.join()
        with open(error_path, encoding='utf-8') as f:
            error = f.read()
    finally:
        os.unlink(error_path)
    if child.exitcode == 0:
        return
    if error:
        report = json.loads(error)
        raise (ConfigError if report['kind'] == 'ConfigError' else ModelError)(report['message'])
    raise ModelError(f'building the graph failed (the builder process exited with code {child.exitcode}); '
                     'see the GRAPH log above')


def main() -> None:
    """The child of :func:`_build_in_child`: builds and caches the graph of the EngineConfig in its
    spec (stdin). Exit code 0 when the graph is cached, 2 after a config or model error."""
    import sys

    from ..errors import BertServingError
    from ..log import get_logger
    from ..launcher import die_with_parent, read_spec

    spec = read_spec()
    die_with_parent()
    # The build reads the public API (modeling.py), but never Keras, scikit-learn or SciPy: kept out,
    # they would cost the child about 1.5 s of CPU and 120 MiB on every cold start.
    from .tfimport import defer_public_api
    try:
        with heap_kept_while_building():  # TensorFlow's import too
            defer_public_api()
            prepare_graph(EngineConfig(**spec['engine']), get_logger('GRAPH', spec.get('verbose', False)))
    except BertServingError as e:
        with open(spec['error_path'], 'w', encoding='utf-8') as f:
            json.dump({'kind': type(e).__name__, 'message': str(e)}, f)
        sys.exit(2)
