"""The BERT forward pass and the pooling, built as a TensorFlow graph.

Weights are folded in as constants, so the result is a frozen inference graph.
Only the transformer blocks up to the deepest pooled layer are built.

Dimension legend used in comments:
    B batch, T tokens, D hidden width, N attention heads, S head width (D / N),
    I intermediate width, L pooled layers, K labels of a classifier head.
"""
from __future__ import annotations

import functools
import math
from typing import Dict, List

import numpy as np

from .checkpoint import BertConfig
from ..config import EngineConfig, PoolingStrategy
from ..errors import ConfigError

__all__ = ['INPUT_NAMES', 'TOKEN_INDEX_NAME', 'ATTENTION_SLOTS_NAME', 'OUTPUT_NAME', 'NARROW_PREFIX', 'resolve_layers', 'layers_to_compute',
           'build_graph_def', 'output_width', 'layer_shards']

INPUT_NAMES = ('input_ids', 'input_mask', 'input_type_ids')
# The wide tower's fourth input, int32 [R]: where in the flattened [B*T] batch each row of its dense
# layers comes from (the real tokens, in order, then R - (real tokens) slots equal to B*T, whose
# rows are computed and dropped). See _tower.
TOKEN_INDEX_NAME = 'token_index'
# The wide tower's fifth input, int32 [A, U]: the layout of its attention. Each of the A rows holds
# whole inputs side by side (several short ones in one row), each slot names the flattened [B*T]
# slot it takes, or B*T where it is empty. An input attends to its own tokens only, so attention
# costs A x U x U instead of B x T x T. See engine.runner.attention_layout.
ATTENTION_SLOTS_NAME = 'attention_slots'
OUTPUT_NAME = 'final_encodes'
NARROW_PREFIX = 'narrow/'  # the name scope of the tower for narrow batches (see build_graph_def)


def resolve_layers(cfg: EngineConfig, bc: BertConfig) -> List[int]:
    """Turns -pooling_layer values into 0-based block indices.

    -1 is the last block and -L or 0 the first (the embedding output is not a layer).

    Raises:
        ConfigError: a layer is out of range; the message gives the valid range.
    """
    n = bc.num_hidden_layers
    out = []
    for layer in cfg.pooling_layer:
        if not -n <= layer < n:
            raise ConfigError(f'pooling_layer {layer} is out of range for a model with {n} layers; '
                              f'use -1 (last) to {-n} (first), or 0 to {n - 1}')
        out.append(layer % n)
    return out


def layers_to_compute(cfg: EngineConfig, bc: BertConfig) -> int:
    """How many transformer blocks the graph needs: up to the deepest pooled one."""
    if cfg.pooling_strategy.needs_pooler:
        return bc.num_hidden_layers
    return max(resolve_layers(cfg, bc)) + 1


def layer_shards(requested: int, bc: BertConfig) -> int:
    """How many parts each block is split into: the largest count up to ``requested`` that divides
    both the attention heads and the intermediate width (1 = no split)."""
    for k in range(max(1, int(requested)), 1, -1):
        if bc.num_attention_heads % k == 0 and bc.intermediate_size % k == 0:
            return k
    return 1


def output_width(cfg: EngineConfig, bc: BertConfig) -> int:
    """Width of one output vector (the last axis)."""
    s = cfg.pooling_strategy
    if s.needs_head:
        return cfg.head_width
    if s == PoolingStrategy.CLS_POOLED:
        return bc.hidden_size
    width = bc.hidden_size * len(cfg.pooling_layer)
    return width * 2 if s == PoolingStrategy.REDUCE_MEAN_MAX else width


def build_graph_def(cfg: EngineConfig, bc: BertConfig, weights: Dict[str, np.ndarray],
                    cls_id: int, sep_id: int):
    """Builds the frozen inference graph.

    Inputs (int32, [B, T]): ``input_ids``, ``input_mask`` (1 on real tokens, 0 on padding),
    ``input_type_ids``; and the wide tower's ``token_index`` (int32, [R], TOKEN_INDEX_NAME) and
    ``attention_slots`` (int32, [A, U], ATTENTION_SLOTS_NAME).
    Outputs (``cfg.output_dtype``): [B, W], or [B, T, W] for NONE pooling, with
    W = output_width(cfg, bc). Matrix products run in ``cfg.compute_dtype``.

    The graph holds two towers of the same model that share the inputs and the weights:
    ``final_encodes`` for most batches, and ``narrow/final_encodes`` for batches of 7 to 80
    tokens (B x T, engine.runner.NARROW_ROWS). The wide tower computes its dense layers on the real
    tokens only, packed by ``token_index`` (int32 [R], see TOKEN_INDEX_NAME), so padding costs it
    attention alone, where short inputs share rows (``attention_slots``); the narrow one computes every padded slot, as a single input has none. oneDNN keeps one reordered copy of each dense layer's weights per tower,
    in the layout of the rows that tower sees (see engine.runner.GraphRunner). With
    ``cfg.fused_layer_norm``, the first tower's layer norms are one oneDNN kernel each (see
    ``_normalized_rows``); the narrow tower keeps plain ones, which answered one sentence
    0.4 ms sooner.

    With ``cfg.mask_cls_sep`` the graph itself zeroes the mask at the ids of [CLS] and [SEP]
    (``cls_id``, ``sep_id``), and that one mask feeds attention and pooling, as in the original.

    Each block is split into ``layer_shards(cfg.layer_shards, bc)`` independent parts (see ``_tower``).

    Returns:
        A ``tf.compat.v1.GraphDef``.
    """
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        inputs = [tf.compat.v1.placeholder(tf.int32, (None, None), name) for name in INPUT_NAMES]
        token_index = tf.compat.v1.placeholder(tf.int32, (None,), TOKEN_INDEX_NAME)
        attention_slots = tf.compat.v1.placeholder(tf.int32, (None, None), ATTENTION_SLOTS_NAME)
        constants = _Constants(tf, weights, tf.as_dtype(cfg.compute_dtype).as_numpy_dtype)
        _tower(tf, cfg, bc, constants, inputs, cls_id, sep_id, fused_norm=cfg.fused_layer_norm,
               token_index=token_index, attention_slots=attention_slots)
        with tf.name_scope(NARROW_PREFIX.rstrip('/')):
            _tower(tf, cfg, bc, constants, inputs, cls_id, sep_id, fused_norm=False)
    return graph.as_graph_def()


class _Constants:
    """The graph's constants, each made once (by the first tower that asks) and shared after."""

    def __init__(self, tf, weights: Dict[str, np.ndarray], np_dtype):
        self._tf, self._weights, self._np_dtype, self._made = tf, weights, np_dtype, {}

    def array(self, name: str, make, cast: bool = True):
        """The constant ``name`` with the value ``make()``, in the compute dtype if ``cast``. ``make``
        runs at once or never (the constant exists already), so it may read the caller's loop variables."""
        if name not in self._made:
            value = make()
            with self._tf.compat.v1.get_default_graph().name_scope(None):  # shared: at the top, not in a tower
                self._made[name] = self._tf.constant(value.astype(self._np_dtype) if cast else value, name=name)
        return self._made[name]

    def weight(self, key: str, cast: bool = True):
        """The checkpoint tensor ``key`` as a constant."""
        return self.array(key.replace('/', '_'), lambda: self._weights[key], cast)

    def __getitem__(self, key: str) -> np.ndarray:
        return self._weights[key]


def _tower(tf, cfg: EngineConfig, bc: BertConfig, constants: _Constants, inputs, cls_id: int, sep_id: int,
           fused_norm: bool, token_index=None, attention_slots=None) -> None:
    """One copy of the model, from the inputs to ``final_encodes`` in the current name scope.

    Every dense layer runs on an [R, D] matrix of rows. Without ``token_index`` a row is each of the
    B x T padded slots. With it (int32 [R]), the rows are the slots it names in the flattened batch:
    the real tokens, then dummy slots (B x T) that round R up to a few sizes (engine.runner). Only
    attention needs a padded layout, ``attention_slots`` ([A, U], whole inputs side by side in each
    row; see ATTENTION_SLOTS_NAME): one gather takes Q, K and V from the rows into it (empty slots
    read row 0) and one brings its output back (a dummy row reads any place; it is cut off).
    """
    dtype = tf.as_dtype(cfg.compute_dtype)
    num_layers = layers_to_compute(cfg, bc)
    input_ids, input_mask, type_ids = inputs

    def layer_norm(x, prefix: str):
        if fused_norm and x.dtype == tf.bfloat16:
            # oneDNN's layer norm reads bfloat16 and computes its statistics in float32 inside, so
            # the bfloat16 graph's norms need no casts around them (with the softmax's, they took
            # 13-16% of a bf16 call's op time); gamma and beta in bfloat16, as the fused kernel wants.
            name = prefix.replace('/', '_')
            gamma = constants.array(name + '_gamma_bf16', lambda: constants[prefix + '/gamma'])
            beta = constants.array(name + '_beta_bf16', lambda: constants[prefix + '/beta'])
            return _normalized_rows(tf, x, bc.layer_norm_eps) * gamma + beta
        # Statistics in float32 even in fp16 graphs: an eps of 1e-12 underflows in half precision.
        x32 = tf.cast(x, tf.float32)
        gamma = constants.weight(prefix + '/gamma', cast=False)
        beta = constants.weight(prefix + '/beta', cast=False)
        if fused_norm:
            y = _normalized_rows(tf, x32, bc.layer_norm_eps) * gamma + beta
        else:
            mean, var = tf.nn.moments(x32, axes=[-1], keepdims=True)
            y = (x32 - mean) * tf.math.rsqrt(var + bc.layer_norm_eps) * gamma + beta
        return tf.cast(y, dtype)

    def activation(x):
        act = bc.hidden_act.lower()
        if act == 'gelu':
            # The exact erf form, as Hugging Face's "gelu", written as Grappler's remapper expects
            # it, so that it runs inside the dense layer's oneDNN kernel (_FusedMatMul with
            # GeluExact) instead of as five more ops; the same values within 1e-6.
            return x * 0.5 * (1.0 + tf.math.erf(x * np.float32(1.0 / math.sqrt(2.0))))
        if act in ('gelu_new', 'gelu_fast', 'gelu_pytorch_tanh'):
            return tf.nn.gelu(x, approximate=True)
        if act == 'relu':
            return tf.nn.relu(x)
        raise ConfigError(f'hidden_act {bc.hidden_act!r} is not supported; use gelu, gelu_new or relu')

    b, t = tf.shape(input_ids)[0], tf.shape(input_ids)[1]
    d, n_heads = bc.hidden_size, bc.num_attention_heads
    s = d // n_heads

    # Embeddings as an [R, D] matrix, so every dense layer is one plain MatMul + BiasAdd (which
    # Grappler fuses) rather than a broadcast batched matmul.
    if token_index is None:
        x = tf.gather(constants.weight('embeddings/word_embeddings'), input_ids)
        x += tf.gather(constants.weight('embeddings/token_type_embeddings'), type_ids)
        if not cfg.no_position_embeddings:
            x += constants.weight('embeddings/position_embeddings')[tf.newaxis, :t]
        x = tf.reshape(x, [b * t, d])

        slot_rows = None

        def zero_padded(rows):  # [R, C] -> [B*T, C], zeros on padding
            return rows
    else:
        source = tf.minimum(token_index, b * t - 1)  # a dummy row reads the last slot
        scatter_at = token_index[:, tf.newaxis]
        # The packed row of each slot, [B*T]; padding slots read row 0 (dummy rows all go to the
        # extra slot, cut off).
        slot_rows = tf.tensor_scatter_nd_update(tf.zeros(tf.reshape(b * t + 1, [1]), tf.int32), scatter_at,
                                                tf.range(tf.shape(token_index)[0]))[:b * t]

        def zero_padded(rows):
            shape = tf.stack([b * t + 1, tf.shape(rows)[1]])  # dummy rows add up in the extra slot
            return tf.scatter_nd(scatter_at, rows, shape)[:b * t]

        def packed(slots):
            return tf.gather(slots, source)

        x = tf.gather(constants.weight('embeddings/word_embeddings'), packed(tf.reshape(input_ids, [-1])))
        x += tf.gather(constants.weight('embeddings/token_type_embeddings'), packed(tf.reshape(type_ids, [-1])))
        if not cfg.no_position_embeddings:
            x += tf.gather(constants.weight('embeddings/position_embeddings'), source % t)
    x = layer_norm(x, 'embeddings/LayerNorm')  # [R, D]

    # The model's input mask: real tokens, without [CLS]/[SEP] under -mask_cls_sep; [B, T].
    real = tf.cast(input_mask, tf.float32)
    mask = real
    if cfg.mask_cls_sep:
        special = tf.logical_or(tf.equal(input_ids, cls_id), tf.equal(input_ids, sep_id))
        mask = real * (1.0 - tf.cast(special, tf.float32))
    # Additive float32 attention bias of each key, [B, T]: 0 where mask is 1, -10000 on masked
    # [CLS]/[SEP] (BERT's value), and far lower on padding, so that an input whose every
    # key is masked ("[CLS] [SEP]" under -mask_cls_sep) attends to its own tokens, never to
    # padding, and padding still cannot change a vector.
    key_bias = (real - mask) * -10000.0 + (1.0 - real) * -1e9
    # bfloat16 has float32's range, and oneDNN's softmax computes in float32 inside: a bfloat16 bias
    # and softmax give the same probabilities as casting to float32 and back, without two casts per
    # head group (with the layer norms' casts, 13-16% of the op time of a bf16 call, 2 vCPUs, Intel
    # Xeon with AMX). float16 would overflow -1e9: its softmax runs in float32.
    bias_dtype = tf.bfloat16 if dtype == tf.bfloat16 else tf.float32
    if attention_slots is None:
        attn_bias = tf.cast(key_bias[:, tf.newaxis, tf.newaxis, :], bias_dtype)  # [B, 1, 1, T]
    else:
        # [A, 1, U, U]: each query sees the keys of its own input (with their bias above), and -1e9
        # elsewhere: the other inputs of its row and the empty slots. An empty slot belongs to no
        # input (-1) and holds -1e9 as a key.
        flat_slots = tf.reshape(attention_slots, [-1])
        key_bias = tf.cast(tf.reshape(tf.gather(tf.concat([tf.reshape(key_bias, [-1]), [-1e9]], 0), flat_slots),
                                      tf.shape(attention_slots)), bias_dtype)
        owner = tf.reshape(tf.gather(tf.concat([tf.range(b * t) // t, [-1]], 0), flat_slots), tf.shape(attention_slots))
        same = tf.equal(owner[:, :, tf.newaxis], owner[:, tf.newaxis, :])
        attn_bias = tf.where(same, key_bias[:, tf.newaxis, :], tf.constant(-1e9, bias_dtype))[:, tf.newaxis]
    if dtype == tf.bfloat16:
        def attention_weights(scores):  # [A, N/shards, U, U] (B, T in the narrow tower)
            return tf.nn.softmax(scores + attn_bias, axis=-1)
    else:
        def attention_weights(scores):
            return tf.cast(tf.nn.softmax(tf.cast(scores, tf.float32) + attn_bias, axis=-1), dtype)

    shards = layer_shards(cfg.layer_shards, bc)
    width = d // shards  # the hidden units of one shard's heads
    heads = n_heads // shards

    if slot_rows is None:
        def head_major(qkv):  # [B*T, 3 x heads x S] -> [3, B, heads, T, S]
            return tf.transpose(tf.reshape(qkv, [b, t, 3, heads, s]), [2, 0, 3, 1, 4])

        def token_rows(context):  # [B, heads, T, S] -> [B*T, heads x S]
            return tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [b * t, width])
    else:
        # Attention's layouts straight from and to the packed rows, one gather of S-wide slices
        # each way, instead of a gather of rows and a transpose (~12% of the time of calls of mixed
        # lengths, 2 vCPUs, Intel Xeon). Keys and values of empty slots read row 0's: they get a
        # weight of exactly 0, so any finite row serves; queries in empty slots are never read back.
        # In attention's layout (attention_slots, [A, U]) rather than the inputs' [B, T].
        rows_a, cols_u = tf.shape(attention_slots)[0], tf.shape(attention_slots)[1]
        at_rows = tf.gather(tf.concat([slot_rows, [0]], 0), attention_slots)  # [A, U]; empty slots read row 0
        part = tf.range(3)[:, tf.newaxis, tf.newaxis, tf.newaxis]
        head = tf.range(heads)[tf.newaxis, tf.newaxis, :, tf.newaxis]
        qkv_at = tf.reshape(tf.reshape(at_rows, tf.stack([1, rows_a, 1, cols_u])) * (3 * heads) + part * heads + head,
                            [-1])
        # Where each input slot sits in the layout (a slot not in it, padding, reads position 0).
        position = tf.tensor_scatter_nd_update(tf.zeros(tf.reshape(b * t + 1, [1]), tf.int32),
                                               tf.reshape(attention_slots, [-1, 1]), tf.range(rows_a * cols_u))
        at = tf.gather(position, source)
        slot_b, slot_t = at // cols_u, at % cols_u
        context_at = tf.reshape((slot_b * heads)[:, tf.newaxis] * cols_u + tf.range(heads)[tf.newaxis, :] * cols_u
                                + slot_t[:, tf.newaxis], [-1])  # [R x heads]: (a, h, u) of each row's heads

        def head_major(qkv):  # [R, 3 x heads x S] -> [3, A, heads, U, S]
            return tf.reshape(tf.gather(tf.reshape(qkv, [-1, s]), qkv_at), tf.stack([3, rows_a, heads, cols_u, s]))

        def token_rows(context):  # [A, heads, U, S] -> [R, heads x S]
            return tf.reshape(tf.gather(tf.reshape(context, [-1, s]), context_at), [-1, width])

    def join(parts, residual):
        # One part: the residual add oneDNN fuses into the dense layer. Several: one AddN, which
        # nothing fuses, so no part waits for another.
        return parts[0] + residual if len(parts) == 1 else tf.add_n(parts + [residual])

    def block(x, p: str):
        """One transformer block on [R, D], split into ``shards`` independent parts (a
        disjoint group of heads each, and a slice of the feed-forward units) that meet only
        where their contributions are added: TensorFlow runs the parts side by side on its
        inter-op threads. The attention output and the second feed-forward layer are summed
        over their input units in parts, each with an even share of the bias, so that every
        part is the same fused oneDNN kernel (Grappler would fold a zero bias away)."""
        name = p.replace('/', '_')
        units = constants[p + 'intermediate/dense/kernel'].shape[1] // shards
        # Q, K and V in one matmul per shard.
        fused_qkv = functools.cache(lambda: _fused_qkv(constants, p))
        attended, fed = [], []
        for i in range(shards):
            cols = np.concatenate([np.arange(j * d + i * width, j * d + (i + 1) * width) for j in range(3)])
            qkv_w = constants.array(f'{name}qkv_{i}', lambda: fused_qkv()[0][:, cols])
            qkv_b = constants.array(f'{name}qkv_bias_{i}', lambda: fused_qkv()[1][cols])
            # Q, K and V head-major ([3, A, N/shards, U, S]), for two batched matmuls; einsums on
            # [B, T, N, S] after three slices were 6-10% slower on large batches.
            qkv = head_major(tf.nn.bias_add(tf.matmul(x, qkv_w), qkv_b))
            # [A, N/shards, U, U]. The 1/sqrt(S) scale here, not folded into Q's weights: Grappler
            # fuses the batched matmul, this Mul and the attention bias's Add into one oneDNN kernel
            # (_MklFusedBatchMatMulV2) in the wide tower: 5-10% faster with -bf16, the same in float32.
            scores = tf.matmul(qkv[0], qkv[1], transpose_b=True) * tf.constant(1.0 / math.sqrt(s), dtype)
            probs = attention_weights(scores)
            ctx = token_rows(tf.matmul(probs, qkv[2]))  # [R, D/shards]
            rows = slice(i * width, (i + 1) * width)
            wo = constants.array(f'{name}attention_out_{i}', lambda: constants[p + 'attention/output/dense/kernel'][rows])
            bo = constants.array(f'{name}attention_out_bias_{i}',
                                 lambda: constants[p + 'attention/output/dense/bias'] / shards)
            attended.append(tf.nn.bias_add(tf.matmul(ctx, wo), bo))
        x = layer_norm(join(attended, x), p + 'attention/output/LayerNorm')
        for i in range(shards):
            part = slice(i * units, (i + 1) * units)
            w1 = constants.array(f'{name}intermediate_{i}', lambda: constants[p + 'intermediate/dense/kernel'][:, part])
            b1 = constants.array(f'{name}intermediate_bias_{i}', lambda: constants[p + 'intermediate/dense/bias'][part])
            w2 = constants.array(f'{name}output_{i}', lambda: constants[p + 'output/dense/kernel'][part])
            b2 = constants.array(f'{name}output_bias_{i}', lambda: constants[p + 'output/dense/bias'] / shards)
            hidden = activation(tf.nn.bias_add(tf.matmul(x, w1), b1))  # [R, I/shards]
            fed.append(tf.nn.bias_add(tf.matmul(hidden, w2), b2))
        return layer_norm(join(fed, x), p + 'output/LayerNorm')

    pooled_layers = resolve_layers(cfg, bc)
    wanted = {num_layers - 1} if cfg.pooling_strategy.needs_pooler else set(pooled_layers)
    layer_outputs = []
    for n in range(num_layers):
        x = block(x, f'encoder/layer_{n}/')
        layer_outputs.append(tf.reshape(zero_padded(x), [b, t, d]) if n in wanted else None)  # [B, T, D]

    pooled = _pool(tf, cfg, constants, layer_outputs, pooled_layers, input_mask, mask)
    tf.identity(tf.cast(pooled, cfg.output_dtype), name=OUTPUT_NAME)


def _pool(tf, cfg, constants: _Constants, layer_outputs, pooled_layers, input_mask, mask):
    """Applies the pooling strategy; see the reference semantics in docs/models.md.

    Args:
        layer_outputs: every computed block's output, [B, T, D] each (None for a block not pooled;
            the last block's with the pooler).
        input_mask: int32 [B, T], 1 on real tokens.
        mask: float32 [B, T], the model's input mask (without [CLS]/[SEP] under -mask_cls_sep).

    Returns:
        float32 [B, W] or [B, T, W].
    """
    strategy = cfg.pooling_strategy
    if strategy.needs_pooler:
        # BERT's pooler: tanh(W x[:, 0] + b) on the last block; [B, D].
        first = tf.cast(layer_outputs[-1][:, 0], tf.float32)
        pooler = tf.tanh(tf.matmul(first, constants.weight('pooler/dense/kernel', cast=False))
                         + constants.weight('pooler/dense/bias', cast=False))
        if strategy == PoolingStrategy.CLS_POOLED:
            return pooler
        # Fine-tuned head: logits = pooled W^T + b; [B, K] (K = 1 for REGRESSION).
        logits = tf.matmul(pooler, constants.weight('output_weights', cast=False), transpose_b=True) \
            + constants.weight('output_bias', cast=False)
        if strategy == PoolingStrategy.CLASSIFICATION:
            return tf.nn.softmax(logits, axis=-1)
        return tf.sigmoid(logits)

    # Layers concatenated on the last axis in the order given; [B, T, D*L], float32 from here on.
    chosen = [tf.cast(layer_outputs[i], tf.float32) for i in pooled_layers]
    x = chosen[0] if len(chosen) == 1 else tf.concat(chosen, axis=-1)
    if strategy == PoolingStrategy.CLS_TOKEN:
        return x[:, 0]
    if strategy == PoolingStrategy.SEP_TOKEN:
        # The last real token, the final [SEP], even under -mask_cls_sep (where the original's
        # sum(mask) - 1 lands on a word inside the input); [B].
        last = tf.reduce_sum(input_mask, axis=1) - 1
        return tf.gather(x, last, batch_dims=1)
    m = mask[:, :, tf.newaxis]  # [B, T, 1]
    if strategy == PoolingStrategy.NONE:
        return x * m
    mean = tf.reduce_sum(x * m, axis=1) / (tf.reduce_sum(m, axis=1) + 1e-10)  # [B, D*L]
    if strategy == PoolingStrategy.REDUCE_MEAN:
        return mean
    mx = tf.reduce_max(x - (1.0 - m) * 1e30, axis=1)  # [B, D*L]
    if strategy == PoolingStrategy.REDUCE_MAX:
        return mx
    return tf.concat([mean, mx], axis=-1)



def _normalized_rows(tf, x, eps: float):
    """Each row of the float32 matrix ``x`` ([R, D]) less its mean, over its standard deviation.

    Written as Keras writes a layer norm, a batch norm in training mode over [1, R, D, 1] (NCHW, so
    each row is a channel), which Grappler's remapper fuses with the ``* gamma + beta`` that follows
    into one oneDNN ``_MklLayerNorm`` kernel: a 12-norm chain on 3,072 rows took 4.4 ms instead of
    16.2 (2 vCPUs, AMD EPYC, one thread), as close to a float64 norm (5.6e-6 against 6.7e-6). The
    raw op keeps BERT's epsilon; ``tf.nn.fused_batch_norm`` would raise it to 1.001e-5.
    """
    rows = tf.shape(x)[0]
    ones = tf.fill(tf.reshape(rows, [1]), 1.0)
    zeros = tf.fill(tf.reshape(rows, [1]), 0.0)
    empty = tf.constant([], tf.float32)
    y = tf.raw_ops.FusedBatchNormV3(x=tf.reshape(x, tf.stack([1, rows, x.shape[-1], 1])), scale=ones,
                                    offset=zeros, mean=empty, variance=empty, epsilon=eps,
                                    exponential_avg_factor=1.0, data_format='NCHW', is_training=True)[0]
    return tf.reshape(y, tf.shape(x))


def _fused_qkv(weights, prefix: str):
    """Query, key and value kernels side by side ([D, 3D]) and biases ([3D])."""
    part = prefix + 'attention/self/'
    kernel = np.concatenate([weights[part + 'query/kernel'], weights[part + 'key/kernel'],
                             weights[part + 'value/kernel']], axis=1)
    bias = np.concatenate([weights[part + 'query/bias'], weights[part + 'key/bias'],
                           weights[part + 'value/bias']])
    return kernel.astype(np.float32), bias.astype(np.float32)
