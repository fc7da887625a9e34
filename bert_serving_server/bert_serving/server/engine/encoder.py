"""The in-process encoder: texts in, vectors out. Workers, tests and benchmarks share it.

    enc = Encoder(EngineConfig(pooling_strategy='REDUCE_MEAN'))
    vectors, tokens = enc.encode(['hello world', 'a ||| pair'])
"""
from __future__ import annotations

import bisect
import concurrent.futures
import functools
import logging
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..config import EngineConfig, PoolingStrategy, ServerConfig, field_default
from .base import Engine
from .devices import CPU_BATCH_TOKENS, cpu_threads, session_threads
from .features import Feature, batch_sizes, pad_batch, to_features
from .graph import FrozenGraph, graph_layer_shards, prepare_graph
from .runner import NARROW_ROWS, GraphRunner, fewest_attention_rows, packed_rows
from .modeling import output_width
from .tokenization import BertTokenizer

__all__ = ['Encoder']

# The fixed cost of one TensorFlow call in tokens' worth of compute: a 16-token sentence takes 6.0 ms
# where the large batches run 7,700 tokens/s (2 vCPUs, AMD EPYC, float32), so ~4 ms = ~30 tokens.
CALL_COST_TOKENS = 32
# The wide tower computes its dense layers on real tokens only (modeling._tower); padding costs it
# attention, which grows with T squared and, against a dense layer, shrinks with the width D: A rows
# of attention padded to T cost about A x T x T / (ATTENTION_WIDTHS x D) tokens more (MiniLM, D = 384:
# 32 inputs of 24 word pieces padded to 96 took 25 ms more than unpadded, 2 vCPUs, AMD EPYC, float32).
# A is B, or fewer where short inputs share a row (runner.attention_layout): random groups of 31 bench
# sentences ran 7% faster with the packed rows (in process, alternating calls, 2 vCPUs, Intel Xeon).
ATTENTION_WIDTHS = 4

# TensorFlow's oneDNN kernels keep compiled primitives for every (B, T) a graph has seen, about
# 1.1 MB per shape, in a per-thread LRU cache of 1,024 primitives (~146 shapes, ~170 MB); they are
# also built again, at a cost in time, when an evicted shape comes back: a worker serving 32
# one-sentence clients met 533 shapes before this bucketing. So a batch of several inputs has one of a few sizes (1, 2, 3, 4, 6, 8,
# 12, ...: powers of two and 1.5 times them) and is padded to an even length (a multiple of 4 past
# 32 tokens, of 8 past 64: at most ~6% of padding). A single input is padded the same way: its
# shapes were a third of all (91 of 274 in a bench-like replay), and a worker whose blocks are split
# keeps them once per inter-op thread (-17 MiB at the end of that replay, 0.15% more tokens).
# Padding to multiples of 8 throughout saved more memory but cost 15% of the throughput.
# A batch of EXACT_LENGTH_SIZE inputs or more keeps its longest input's length: such batches come
# from large requests, whose pieces hold inputs of about the same length (the ventilator sorts
# them), where rounding was most of the padding (the bench request: 1.7% padded tokens instead of
# 3.7%, 59 shapes instead of 55). The cuts of many small clients' requests, of mixed lengths,
# rarely reach that size: a replay of 64 and of 128 concurrent one-sentence clients made none.
EXACT_LENGTH_SIZE = 48
# A TensorFlow call alone leaves the session's threads idle part of the time: the parts of a split
# block wait for each other at every layer norm. A second call in flight fills those gaps, so a run
# that the plan (Encoder._batches) gives no more calls than ``parallel_calls`` is dealt into that
# many calls of about the same work (the inputs in length order, round-robin), when it holds
# parallel_calls x SPREAD_MIN_TOKENS word pieces or more and at least parallel_calls inputs. Only
# where the dense layers compute real tokens alone (runner.packs): with -xla they compute every
# padded slot, and dealing a plan's short and long calls would pad the short inputs.
# In process, calls of N consecutive bench lines (2 vCPUs, Intel Xeon, two rounds, one call's rate
# = 1): N = 28, float32 0.78-0.83 as one call, 0.85-0.86 dealt in two; -bf16 0.62-0.67 and
# 0.65-0.66; N = 64, 0.76-0.82 and 0.93-0.94, -bf16 0.60-0.69 and 0.85-0.90 (against a single
# call; the plan already cut some of those batches in two). Below ~256 word pieces the second
# call's fixed cost outweighs what it fills: N = 8 (~180) lost 3-8%, N = 12 (~270) gained 3-4% in
# float32. Through the service the gain is smaller, as the clients, the ventilator and the sink
# share the cores: 32 one-sentence clients 376-386 sentences/s against 360-381 (float32, three
# alternating pairs of servers, two rounds each), one client's requests of 64 sentences 441-459
# against 430-434.
SPREAD_MIN_TOKENS = 128


class Encoder(Engine):
    """Encodes texts with a frozen BERT graph in this process.

    Args:
        config: the engine configuration.
        logger: where progress goes.
        intra_op_threads / inter_op_threads: TensorFlow thread pools (0 = TF's choice; both 0
            with a graph whose blocks are split (``config.layer_shards``) = one inter-op thread
            per part and the other cores as intra-op threads).
        gpu_memory_fraction: GPU memory cap per process.
        max_batch_size: most sequences per TensorFlow call.
        max_batch_tokens: most padded tokens (B x T) per TensorFlow call.
        graph: a graph already prepared for ``config`` (skips the cache lookup).
        frozen_weights: let oneDNN assume that no MatMul of this process ever sees a changed
            right operand (``TF_ONEDNN_ASSUME_FROZEN_WEIGHTS``), which lets the weights exist
            once instead of twice (~200 MB less for MiniLM) at the same speed. True suits a worker
            process; pass False (or set that variable to 0) in a process that also trains a model.
        parallel_calls: how many TensorFlow calls of one ``run`` are in flight at once (None = one
            per part of a split block, see ``config.layer_shards``; always 1 with ``config.on_gpu``).
            The parts of a block wait for each other at every layer norm, and between calls the
            session idles while Python pads the next batch: a second call fills those gaps. 4,096
            bench sentences in process: +12-17% with -bf16, +6-9% in float32; through the service
            +25-34% and +2-7% (2 vCPUs, Intel Xeon). A request of one call under
            ``parallel_calls x SPREAD_MIN_TOKENS`` word pieces runs it alone, at the same latency;
            a larger one is dealt into that many calls (see SPREAD_MIN_TOKENS). Up to this many
            calls of ``max_batch_tokens`` hold their activations at once.

    One caller at a time: ``run`` is not meant to be called from several threads at once.
    """

    def __init__(self, config: EngineConfig, *, logger: Optional[logging.Logger] = None,
                 intra_op_threads: int = 0, inter_op_threads: int = 0,
                 gpu_memory_fraction: Optional[float] = None,
                 max_batch_size: int = field_default(ServerConfig, 'max_batch_size'),
                 max_batch_tokens: int = CPU_BATCH_TOKENS, graph: Optional[FrozenGraph] = None,
                 frozen_weights: bool = True, parallel_calls: Optional[int] = None):
        self.config = config
        self.logger = logger or logging.getLogger(__name__)
        self.graph: FrozenGraph = graph or prepare_graph(config, self.logger)
        self.bert_config = self.graph.bert_config
        self.tokenizer = BertTokenizer(self.graph.files.vocab_path, do_lower_case=config.do_lower_case)
        shards = graph_layer_shards(config, self.graph)
        if shards > 1 and not intra_op_threads and not inter_op_threads:
            intra_op_threads, inter_op_threads = session_threads(cpu_threads(1), shards)
        self.runner = GraphRunner(self.graph, xla=config.xla, intra_op_threads=intra_op_threads,
                                  inter_op_threads=inter_op_threads,
                                  gpu_memory_fraction=gpu_memory_fraction, frozen_weights=frozen_weights)
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_batch_tokens = max(1, int(max_batch_tokens))
        self._sizes = batch_sizes(self.max_batch_size)
        self._longest = self.bert_config.max_position_embeddings
        self._attention_tokens = ATTENTION_WIDTHS * self.bert_config.hidden_size
        self.output_dim = output_width(config, self.bert_config)
        self.parallel_calls = 1 if config.on_gpu else max(1, int(shards if parallel_calls is None else parallel_calls))
        self._pool: Optional[concurrent.futures.ThreadPoolExecutor] = None

    @property
    def is_token_level(self) -> bool:
        """True for NONE pooling, where each input gives a [T, D] matrix."""
        return self.config.pooling_strategy == PoolingStrategy.NONE

    def trims_token_axis(self) -> bool:
        """NONE pooling with max_seq_len NONE: each piece may be cut to its longest input."""
        return self.is_token_level and self.config.max_seq_len is None and not self.config.fixed_embed_length

    def featurize(self, texts: Sequence, is_tokenized: bool = False) -> List[Feature]:
        """Tokenizes a request (pairs, truncation, special tokens) into features.

        Raises:
            BadRequest: an element has the wrong type; the message names it.
        """
        return to_features(self.tokenizer, texts, is_tokenized=is_tokenized,
                           max_seq_len=self.config.max_seq_len,
                           no_special_token=self.config.no_special_token,
                           max_position_embeddings=self.bert_config.max_position_embeddings)

    def token_axis_length(self, features: Sequence[Feature]) -> int:
        """T of a NONE-pooled request: max_seq_len, else the request's longest input
        (or max_position_embeddings with fixed_embed_length)."""
        if self.config.max_seq_len is not None:
            return self.config.max_seq_len
        if self.config.fixed_embed_length:
            return self.bert_config.max_position_embeddings
        return max((len(f.input_ids) for f in features), default=1)

    def run(self, features: Sequence[Feature], token_axis: Optional[int] = None) -> np.ndarray:
        """Encodes features, in length-sorted batches each padded to its longest input.

        Args:
            features: tokenized inputs.
            token_axis: for NONE pooling, the T of the output (default: token_axis_length).

        Returns:
            [B, W], or [B, T, W] for NONE pooling, rows in input order; float16 with -fp16,
            else float32 (``config.output_dtype``).
        """
        n = len(features)
        dtype = np.dtype(self.config.output_dtype)
        if self.is_token_level:
            t_out = token_axis or self.token_axis_length(features)
            out = np.zeros((n, t_out, self.output_dim), dtype=dtype)
        else:
            out = np.empty((n, self.output_dim), dtype=dtype)
        self.last_padded_tokens = 0
        if n == 0:
            return out
        if n == 1:  # one call, whatever the plan's costs (a search box's request: skip the planning)
            batches = [[0]]
        else:
            order = sorted(range(n), key=lambda i: len(features[i].input_ids))
            batches = self._spread(list(self._batches(order, features)), features)
        call = functools.partial(self._call, features, out)
        if len(batches) > 1 and self.parallel_calls > 1:
            self.last_padded_tokens = self._run_side_by_side(call, batches)
        else:
            self.last_padded_tokens = sum(call(batch) for batch in batches)
        return out

    def _run_side_by_side(self, call, batches: List[List[int]]) -> int:
        """Runs ``call`` on every batch, ``parallel_calls`` at a time, the longest inputs first (so
        that no long call runs alone at the end), and returns the sum of the rows they computed. On
        a failure or an interrupt the calls not started are dropped, and the error is raised once
        the running ones have stopped."""
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self.parallel_calls, thread_name_prefix='model-call')
        futures: List[concurrent.futures.Future] = []
        try:
            for batch in reversed(batches):
                futures.append(self._pool.submit(call, batch))
            concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
        finally:
            for future in futures:
                future.cancel()  # only those not started
            concurrent.futures.wait(futures)
        for future in futures:
            if not future.cancelled() and future.exception() is not None:
                raise future.exception()
        return sum(future.result() for future in futures)

    def _spread(self, batches: List[List[int]], features: Sequence[Feature]) -> List[List[int]]:
        """``batches`` dealt into ``parallel_calls`` calls when they are no more (see
        SPREAD_MIN_TOKENS) and each dealt call stays within the token budget; else ``batches`` as
        they are. Each dealt call holds every ``parallel_calls``-th input in length order, so all
        take about as long.

        Args:
            batches: the plan, consecutive slices of one length-sorted order (``_batches``).
        """
        k = self.parallel_calls
        if k < 2 or not 0 < len(batches) <= k or not self.runner.packs:
            return batches
        order = [i for batch in batches for i in batch]  # length-sorted already
        if len(order) < k or sum(len(features[i].input_ids) for i in order) < k * SPREAD_MIN_TOKENS:
            return batches
        dealt = [order[j::k] for j in range(k)]
        for batch in dealt:  # never more inputs than the plan's largest call: only the length can grow
            size = self._batch_size(len(batch))
            if size * self._padded(len(features[batch[-1]].input_ids), size) > self.max_batch_tokens:
                return batches
        return dealt

    def _call(self, features: Sequence[Feature], out: np.ndarray, batch: List[int]) -> int:
        """Runs one TensorFlow call on ``batch`` (indices into ``features``, length-sorted), writes its
        rows of ``out`` and returns the rows its dense layers computed."""
        size = self._batch_size(len(batch))
        length = self._padded(len(features[batch[-1]].input_ids), size)
        ids, mask, types = pad_batch([features[i] for i in batch], length, rows=size)
        result, rows = self.runner.run_batch(ids, mask, types)
        result = result[:len(batch)]
        if self.is_token_level:
            width = min(length, out.shape[1])
            out[batch, :width] = result[:, :width]
        else:
            out[batch] = result
        return rows

    def _batch_size(self, inputs: int) -> int:
        """B of a call of ``inputs`` inputs: the smallest allowed batch size that holds them (the
        rows past them are one-token inputs, dropped; see the notes on shapes above)."""
        return self._sizes[bisect.bisect_left(self._sizes, inputs)]

    def _padded(self, longest: int, size: int) -> int:
        """T of a batch of ``size`` inputs whose longest has ``longest`` tokens."""
        if size >= EXACT_LENGTH_SIZE:
            return longest
        step = 2 if longest <= 32 else 4 if longest <= 64 else 8
        return max(longest, min(-(-longest // step) * step, self._longest))

    def _attention_rows(self, real: int, long: int, length: int, size: int) -> int:
        """About how many rows the wide tower's attention has for a batch of ``size`` inputs,
        ``real`` tokens in all, ``long`` of them longer than half of ``length``, the padded length
        (runner.attention_layout packs the inputs side by side in rows of ``length``; no two long ones
        share a row): one more than the least, rounded up to an allowed size, and ``size`` at most.
        An estimate: inputs of a third to a half of ``length`` fit only two to a row, which it
        does not count (64 inputs of 22 tokens padded to 64 take 32 rows; it says 24)."""
        least = fewest_attention_rows(real, long, length) + 1
        return min(size, self._sizes[bisect.bisect_left(self._sizes, min(least, self._sizes[-1]))])

    def _batches(self, order: List[int], features: Sequence[Feature]):
        """Cuts a length-sorted order into the batches of least total cost, within the size and
        token budgets and the allowed batch sizes.

        A TensorFlow call costs about CALL_COST_TOKENS tokens' worth of time plus its dense rows:
        B x T padded slots in the narrow tower, the real tokens in the wide one, which pays for
        padding only in attention (ATTENTION_WIDTHS), on the rows that hold its inputs side by side
        (_attention_rows). So a narrow batch is split where the padding
        it saves outweighs one more call, and a wide one only where attention over long padding
        would: twelve one-sentence requests of 8 to 60 word pieces go in one call. Dynamic
        programming over the sorted lengths and the allowed sizes.
        """
        n = len(order)
        lengths = [max(1, len(features[i].input_ids)) for i in order]
        tokens = np.concatenate([[0], np.cumsum(lengths)])  # tokens[j]: of the first j inputs
        best = np.zeros(n + 1, dtype=np.float64)  # best[j]: least cost of the first j inputs
        start = np.zeros(n + 1, dtype=np.int64)  # where the last batch of that optimum starts
        largest = self._sizes[-1]
        for j in range(1, n + 1):
            t = lengths[j - 1]  # sorted: the batch's longest input is its last
            best[j] = np.inf
            # Batches of an allowed size, and a first batch of any count up to the largest one,
            # filled with one-token inputs to the next allowed size: 31 inputs are one call of 32,
            # not three of 24, 6 and 1.
            counts = [size for size in self._sizes if size < j]
            if j <= largest:
                counts.append(j)
            for count in counts:
                size = self._batch_size(count)
                padded = self._padded(t, size)
                slots = size * padded
                if count > 1 and slots > self.max_batch_tokens:
                    break
                if NARROW_ROWS[0] <= slots <= NARROW_ROWS[1] or not self.runner.packs:
                    rows = slots
                else:
                    real = int(tokens[j] - tokens[j - count])
                    long = j - bisect.bisect_right(lengths, padded // 2, j - count, j)
                    rows = packed_rows(real, slots) + self._attention_rows(real, long, padded, size) * padded * padded \
                        / self._attention_tokens
                cost = best[j - count] + CALL_COST_TOKENS + rows
                if cost < best[j]:
                    best[j], start[j] = cost, j - count
        cuts = []
        j = n
        while j > 0:
            cuts.append((int(start[j]), j))
            j = int(start[j])
        for a, b in reversed(cuts):
            yield order[a:b]

    def encode(self, texts: Sequence, is_tokenized: bool = False) -> Tuple[np.ndarray, List[List[str]]]:
        """Encodes a request.

        Args:
            texts: strings (``a ||| b`` is a pair), or lists of tokens if is_tokenized.
            is_tokenized: inputs are pre-tokenized.

        Returns:
            (vectors, tokens): [B, W] (or [B, T, W] for NONE pooling), float16 with -fp16
            else float32, and the word pieces of each input as the model saw them.
        """
        features = self.featurize(texts, is_tokenized)
        return self.run(features), [list(f.tokens) for f in features]

    def warm_up(self) -> None:
        """Runs both copies of the graph once (see ``GraphRunner``): 4 and 16 tokens."""
        for length in (4, NARROW_ROWS[0] + 9):
            features = self.featurize([['warm'] * max(1, length - 2)], is_tokenized=True)
            self.run(features)

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        self.runner.close()
