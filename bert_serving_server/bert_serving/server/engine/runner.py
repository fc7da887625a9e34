"""Runs a frozen graph (from ``graph``) in a TensorFlow session, with its weights held once.

Shapes: B inputs, T tokens, W output width.
"""
from __future__ import annotations

import os
from typing import Callable, List, Optional, Tuple

import numpy as np

from ..errors import ModelError
from .features import batch_sizes
from .graph import FrozenGraph
from .modeling import ATTENTION_SLOTS_NAME, INPUT_NAMES, NARROW_PREFIX, OUTPUT_NAME, TOKEN_INDEX_NAME

__all__ = ['GraphRunner', 'NARROW_ROWS', 'attention_layout', 'fewest_attention_rows', 'packed_rows', 'prefer_system_allocator', 'release_free_memory']

class GraphRunner:
    """Runs a frozen graph in a TensorFlow session.

    The frozen graph holds the weights as constants. Before the session sees it, the large
    constants (``VARIABLE_MIN_BYTES`` and up: the embedding tables, and the kernels with
    ``frozen_weights``) become resource variables that are filled once. A constant would be copied by every stage that holds a
    graph (the Python graph, the session's GraphDef, Grappler's working copies, the executor's
    graph, the Const kernels), about six copies of the 90 MB of MiniLM's weights; a variable's
    value exists once, and the graphs hold only its handle.

    oneDNN reorders a MatMul's constant right operand into its blocked layout once and keeps it;
    a variable operand it would reorder on every call (~15% of the throughput), unless
    ``TF_ONEDNN_ASSUME_FROZEN_WEIGHTS`` is on. That switch is process-wide and read once, at the
    first oneDNN MatMul TensorFlow builds: it tells every MatMul of the process that its right
    operand never changes. ``frozen_weights`` sets it (unless the environment already says 0)
    and turns the kernels into variables too; without it, the kernels stay constants (about
    200 MB more for MiniLM).

    Args:
        graph: the frozen graph.
        xla: compile with XLA (JIT).
        intra_op_threads / inter_op_threads: TensorFlow thread pools; 0 lets TF decide.
        gpu_memory_fraction: per-process GPU memory cap (ignored on CPU).
        frozen_weights: this process runs no MatMul whose right operand changes (no training);
            see above.
    """

    def __init__(self, graph: FrozenGraph, *, xla: bool = False, intra_op_threads: int = 0,
                 inter_op_threads: int = 0, gpu_memory_fraction: Optional[float] = None,
                 frozen_weights: bool = False):
        if frozen_weights:
            os.environ.setdefault(FROZEN_WEIGHTS_ENV, '1')
            frozen_weights = os.environ[FROZEN_WEIGHTS_ENV].strip().lower() in ('1', 'true')
        # The runtime only, never the public API: a worker defers that (tfimport).
        from tensorflow.core.framework import graph_pb2
        from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
        from tensorflow.python.client import session
        from tensorflow.python.framework import importer, ops
        from tensorflow.python.ops import gen_array_ops, gen_resource_variable_ops
        graph_def = graph_pb2.GraphDef()
        try:
            with open(graph.path, 'rb') as f:
                graph_def.ParseFromString(f.read())
        except Exception as e:
            raise ModelError(f'{graph.path} is not a valid frozen graph ({e}); delete it to rebuild') from e
        config = config_pb2.ConfigProto(intra_op_parallelism_threads=intra_op_threads,
                                        inter_op_parallelism_threads=inter_op_threads,
                                        allow_soft_placement=True)
        if gpu_memory_fraction is not None:
            config.gpu_options.per_process_gpu_memory_fraction = gpu_memory_fraction
            config.gpu_options.allow_growth = False
        if xla:
            config.graph_options.optimizer_options.global_jit_level = config_pb2.OptimizerOptions.ON_1
        # The device-independent passes already ran when the graph was cached; skipping them here
        # saves ~0.6 s of every worker's start. Device-specific ones (remapper fusions, layout) stay.
        off = rewriter_config_pb2.RewriterConfig.OFF
        rw = config.graph_options.rewrite_options
        for name in ('constant_folding', 'arithmetic_optimization', 'dependency_optimization',
                     'shape_optimization', 'loop_optimization', 'function_optimization', 'debug_stripper'):
            setattr(rw, name, off)
        values = _constants_to_variables(graph_def, f'{os.getpid()}-{id(self)}', with_kernels=frozen_weights)
        self._graph = ops.Graph()
        with self._graph.as_default():
            importer.import_graph_def(graph_def, name='')
            del graph_def
            feeds_init, assigns = {}, []
            for name, value in values:
                ph = gen_array_ops.placeholder(dtype=value.dtype, shape=value.shape, name=f'{name}/init_value')
                handle = self._graph.get_tensor_by_name(f'{name}/handle:0')
                assigns.append(gen_resource_variable_ops.assign_variable_op(resource=handle, value=ph,
                                                                            name=f'{name}/init'))
                feeds_init[ph] = value
        try:
            feeds = [self._graph.get_tensor_by_name(n + ':0') for n in INPUT_NAMES]
            token_index = self._graph.get_tensor_by_name(TOKEN_INDEX_NAME + ':0')
            attention_slots = self._graph.get_tensor_by_name(ATTENTION_SLOTS_NAME + ':0')
            output = self._graph.get_tensor_by_name(OUTPUT_NAME + ':0')
            narrow = self._graph.get_tensor_by_name(NARROW_PREFIX + OUTPUT_NAME + ':0')
        except KeyError as e:  # e.g. an empty file parses as an empty GraphDef
            raise ModelError(f'{graph.path} is not a bert-serving graph (no {e}); delete it to rebuild') from e
        self._session = session.Session(graph=self._graph, config=config)
        if assigns:
            self._session.run(assigns, feeds_init)
        del values, feeds_init
        self._run: Callable = _step(self._session, output, feeds + [token_index, attention_slots])
        self._run_narrow: Callable = _step(self._session, narrow, feeds)
        self._untrimmed = {self._run, self._run_narrow}  # graph copies not run yet
        # XLA compiles a graph per input shape: packed rows would add one more dimension to its shapes.
        self.packs = not xla
        self.last_rows = 0
        release_free_memory()

    def __call__(self, input_ids: np.ndarray, input_mask: np.ndarray, type_ids: np.ndarray) -> np.ndarray:
        """Runs one padded batch; see ``run_batch``. ``last_rows`` then holds the rows its dense
        layers computed (of the last call to return, when several threads call)."""
        out, self.last_rows = self.run_batch(input_ids, input_mask, type_ids)
        return out

    def run_batch(self, input_ids: np.ndarray, input_mask: np.ndarray, type_ids: np.ndarray) -> Tuple[np.ndarray, int]:
        """Runs one padded batch. Safe to call from several threads at once: the session runs the
        calls side by side on its thread pools.

        Args:
            input_ids, input_mask, type_ids: int32 [B, T].

        Returns:
            ([B, W] or [B, T, W] (NONE pooling), float16 from a -fp16 graph, else float32; the rows
            its dense layers computed).
        """
        slots = input_ids.shape[0] * input_ids.shape[1]
        if NARROW_ROWS[0] <= slots <= NARROW_ROWS[1]:
            run, args = self._run_narrow, (input_ids, input_mask, type_ids)
            rows = slots
        else:
            run, args = self._run, self.wide_feeds(input_ids, input_mask, type_ids)
            rows = len(args[3])  # token_index
        out = run(*args)
        if run in self._untrimmed:  # a first run optimises and builds an executor: ~200 MB of garbage
            self._untrimmed.discard(run)
            release_free_memory()
        return out, rows

    def wide_feeds(self, input_ids: np.ndarray, input_mask: np.ndarray, type_ids: np.ndarray) -> tuple:
        """The wide tower's inputs: the three arrays, ``token_index`` (modeling.TOKEN_INDEX_NAME),
        the real tokens' slots padded with dummy slots to packed_rows (every slot with ``-xla``),
        and ``attention_slots`` (modeling.ATTENTION_SLOTS_NAME, see attention_layout; the [B, T]
        slots themselves with ``-xla``). Every input has a token at least (features.to_features
        refuses an empty one), and its tokens come first in its row.
        """
        b, t = input_ids.shape
        slots = b * t
        if not self.packs:
            every = np.arange(slots, dtype=np.int32)
            return input_ids, input_mask, type_ids, every, every.reshape(b, t)
        real = np.flatnonzero(input_mask.reshape(-1))
        token_index = np.full(packed_rows(len(real), slots), slots, dtype=np.int32)
        token_index[:len(real)] = real
        lengths = np.count_nonzero(input_mask, axis=1)
        return input_ids, input_mask, type_ids, token_index, attention_layout(lengths, t)

    def run_tower(self, narrow: bool, input_ids: np.ndarray, input_mask: np.ndarray,
                  type_ids: np.ndarray) -> np.ndarray:
        """Runs one padded batch in the tower named, whatever its size (tests compare the two)."""
        if narrow:
            return self._run_narrow(input_ids, input_mask, type_ids)
        return self._run(*self.wide_feeds(input_ids, input_mask, type_ids))

    def close(self) -> None:
        self._session.close()


def _step(session, fetch, feeds) -> Callable:
    """A function of the ``feeds``' values (int32 arrays) that runs the session and returns ``fetch``.

    ``Session.make_callable`` with feeds is ``Session.run`` with a feed dict: per call it checks and
    converts every feed and fetch in Python: a one-sentence call took 3.47-3.55 ms p50 that way and
    3.00-3.17 ms this way in float32, 2.16-2.22 and 1.81-1.90 ms with -bf16 (400 calls each,
    alternating, three rounds, 2 vCPUs, Intel Xeon). This calls the C function both end in, with the
    feeds' TensorFlow outputs resolved once; make_callable where that function is missing (another
    TensorFlow)."""
    try:
        from tensorflow.python.client import pywrap_tf_session
        run = pywrap_tf_session.TF_SessionRun_wrapper
        outputs, inputs = [fetch._as_tf_output()], [t._as_tf_output() for t in feeds]
    except (ImportError, AttributeError):
        return session.make_callable(fetch, feeds)
    if not hasattr(session, '_session') or not hasattr(session, '_closed'):  # read at each call (see step)
        return session.make_callable(fetch, feeds)
    ranks = [t.shape.rank for t in feeds]

    def step(*values):
        # The C session read through the Session, which this function keeps alive; checked first, as
        # Session.run checks it: a null one (deleted) would crash the process, not raise.
        handle = session._session
        if session._closed or handle is None:
            raise RuntimeError('Attempted to use a closed Session.')
        arrays = [np.ascontiguousarray(v, np.int32) for v in values]
        for array, rank, feed in zip(arrays, ranks, feeds):
            if rank is not None and array.ndim != rank:
                raise ValueError(f'{feed.name} takes {rank} dimensions, got an array of shape {array.shape}')
        return run(handle, None, dict(zip(inputs, arrays)), outputs, [], None)[0]
    return step


# oneDNN's inner product (brgemm, AVX-512, float32) lays the weights out as AB16b32a when a dense
# layer sees 7 to 80 rows (B x T) and as AB16b64a otherwise (ONEDNN_VERBOSE, 1 and 2 threads).
# TensorFlow keeps one reordered copy of a MatMul's frozen weights, in the layout of that node's
# first call, and reorders all 42 MB again on every call that wants the other layout: a worker
# that warmed up on 4 rows took 15 ms instead of 7 for each one-sentence request. So the graph
# holds a second tower of the model (modeling.build_graph_def, sharing the weights), and batches of
# NARROW_ROWS rows run there; each tower keeps the layout its rows want. Elsewhere (another CPU,
# a GPU, bfloat16) a wrong guess costs only that reorder.
NARROW_ROWS = (7, 80)
VARIABLE_MIN_BYTES = 64 * 1024  # constants from this size on become variables (kernels, tables)
FROZEN_WEIGHTS_ENV = 'TF_ONEDNN_ASSUME_FROZEN_WEIGHTS'
# The wide tower's dense layers run on the real tokens only (modeling._tower), R rows rounded up to
# one of 16 sizes per doubling (at most 1/16 more rows): oneDNN compiles kernels for each row count
# it meets and keeps them (~1 MB a shape), and the real token counts of mixed batches take hundreds
# of values. R never falls in NARROW_ROWS, which would make the wide tower's weights take the narrow
# layout (see above), when the batch has more than 80 slots (the only ones above 6 it runs), nor
# exceeds the padded slots, so a dummy row is never more than padding.
PACKED_STEP_BITS = 4  # 2**4 sizes per doubling


def packed_rows(real: int, slots: int) -> int:
    """The rows the wide tower computes for ``real`` tokens in a [B, T] batch of ``slots`` > 80 slots
    (or < 7)."""
    rows = max(1, real)
    step = 1 << max(0, rows.bit_length() - 1 - PACKED_STEP_BITS)
    rows = -(-rows // step) * step
    if NARROW_ROWS[0] <= rows <= NARROW_ROWS[1]:
        rows = NARROW_ROWS[1] + 1
    return min(rows, slots)


def fewest_attention_rows(tokens: int, long: int, t: int) -> int:
    """The fewest rows of ``t`` slots that hold ``tokens`` tokens of whole inputs, ``long`` of which
    are longer than t/2 (no two of those share a row)."""
    return max(long, -(-tokens // t))


def attention_layout(lengths: np.ndarray, t: int) -> np.ndarray:
    """The wide tower's attention layout (modeling.ATTENTION_SLOTS_NAME) for inputs of ``lengths``
    real tokens, the first of each row of a [B, T] batch: rows of ``t`` slots, each holding whole
    inputs side by side, longest first, each in the first row with room (first-fit decreasing).
    Attention then costs rows x T x T instead of B x T x T: 31 inputs of a random mix of lengths
    padded to 96 take ~10 rows (12 once rounded up). The row count is rounded up to one of the
    allowed batch sizes (features.batch_sizes), as few shapes as the batches have; where packing
    could not round to fewer than B rows, the batch keeps its own layout, unpacked.

    Returns:
        int32 [A, t]: the flattened slot (b x T + i) each holds, B x T where empty.
    """
    lengths = np.asarray(lengths)
    b = len(lengths)
    sizes = batch_sizes(b)
    least = fewest_attention_rows(int(lengths.sum()), int(np.count_nonzero(2 * lengths > t)), t)
    order = np.argsort(-lengths, kind='stable')
    if (next(size for size in sizes if size >= least) == b  # or no two inputs share a row:
            or b < 2 or lengths[order[-1]] + lengths[order[-2]] > t):
        slots = np.arange(b * t, dtype=np.int32).reshape(b, t)
        return np.where(np.arange(t)[np.newaxis, :] < lengths[:, np.newaxis], slots, b * t).astype(np.int32)
    room: List[int] = []  # free slots left in each row
    placed = []  # (row, offset) of each input in ``order``
    for i in order:
        n = int(lengths[i])
        for r, free in enumerate(room):
            if free >= n:
                placed.append((r, t - free))
                room[r] -= n
                break
        else:
            placed.append((len(room), 0))
            room.append(t - n)
    rows = next(size for size in sizes if size >= len(room))
    layout = np.full((rows, t), b * t, dtype=np.int32)
    for i, (r, offset) in zip(order, placed):
        n = int(lengths[i])
        layout[r, offset:offset + n] = np.arange(i * t, i * t + n, dtype=np.int32)
    return layout


def _constants_to_variables(graph_def, suffix: str, with_kernels: bool):
    """Turns every large constant of ``graph_def`` into a resource variable, in place.

    A Const node ``N`` becomes ``N = ReadVariableOp(N/handle)`` with ``N/handle`` a VarHandleOp,
    so its consumers are unchanged. ``suffix`` makes the variables' shared names unique to one
    session. Without ``with_kernels``, the right operands of MatMul stay constants.

    Returns:
        [(N, value)]: the values to assign, as numpy arrays.
    """
    from tensorflow.core.framework import attr_value_pb2, node_def_pb2, tensor_shape_pb2
    from tensorflow.python.framework import tensor_util

    names = {n.name for n in graph_def.node}
    kernels = set() if with_kernels else {n.input[1].split(':')[0] for n in graph_def.node if n.op == 'MatMul'}
    values, handles = [], []
    for node in graph_def.node:
        if node.op != 'Const' or node.name in kernels or f'{node.name}/handle' in names:
            continue
        proto = node.attr['value'].tensor
        if proto.dtype == 7:  # DT_STRING: never a weight
            continue
        value = tensor_util.MakeNdarray(proto)
        if value.nbytes < VARIABLE_MIN_BYTES:
            continue
        dtype = node.attr['dtype'].type
        shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d)
                                                       for d in value.shape])
        handle = node_def_pb2.NodeDef(name=f'{node.name}/handle', op='VarHandleOp', device=node.device)
        handle.attr['dtype'].type = dtype
        handle.attr['shape'].shape.CopyFrom(shape)
        handle.attr['container'].s = b''
        handle.attr['shared_name'].s = f'{node.name}-{suffix}'.encode()
        controls = [i for i in node.input if i.startswith('^')]
        node.op = 'ReadVariableOp'
        node.ClearField('attr')
        node.attr['dtype'].CopyFrom(attr_value_pb2.AttrValue(type=dtype))
        node.ClearField('input')
        node.input.extend([handle.name] + controls)
        handles.append(handle)
        values.append((node.name, value))
    graph_def.node.extend(handles)
    return values


# TensorFlow's oneDNN allocator keeps the buffers of large tensors in a pool of its own that never
# shrinks: the peak of the largest batch a process ever ran stays resident. With the system allocator
# they go back to glibc, whose free pages release_free_memory hands back: after the bench workload a
# worker held 733-744 MiB instead of 806-827, at the same speed (2 vCPUs, AMD EPYC, float32).
SYSTEM_ALLOCATOR_ENV = 'TF_ONEDNN_USE_SYSTEM_ALLOCATOR'


def prefer_system_allocator() -> bool:
    """Asks TensorFlow to allocate oneDNN's buffers with the system allocator (see above), unless the
    environment says otherwise. TensorFlow reads it once, at its first allocation: call this before
    the process builds a session (a worker does, at start).

    Returns:
        whether the process will use it.
    """
    os.environ.setdefault(SYSTEM_ALLOCATOR_ENV, '1')
    return os.environ[SYSTEM_ALLOCATOR_ENV].strip().lower() in ('1', 'true')


def release_free_memory() -> None:
    """Hands the heap's free pages back to the system (glibc only). TensorFlow frees what graph
    loading and the first run allocate, but glibc keeps the freed heap pages mapped."""
    import ctypes
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
