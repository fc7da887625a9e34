"""The model alone, by batch size: ``python -m benchmarks.batch_sizes [--sizes 1,4,...] [server flags...]``.

In this process, with no service around it, the engine that a worker of these flags would load
(the bench's standard workload: bundled model, ``-max_seq_len 128 -pooling_layer -1``; the threads
and the token budget of one of ``-num_worker`` CPU workers) encodes the bench corpus in calls of N
one-sentence inputs each, consecutive lines from the first, for each N given; then all the lines in
one call, as one client's big request reaches a worker. Per N it prints the wall time of a call,
sentences per second, the process's CPU per sentence and the share of the one-call rate. With
``--latency_requests R`` it first times R one-sentence calls of ``Engine.encode`` (tokenizing
included, as the in-process peers of ``make bench`` are timed; after an untimed pass over the same
sentences) and prints their p50 and p99. The calls
of N time the first ``--min_sentences`` lines (at least), the one call all of them: the share compares
sentences of about the same length (22.4 word pieces on average over 4,096 lines, 22.4-22.7 over the
first 600-700).

Why: (c) of ``make bench`` sends one sentence per request from 32 clients, so a worker's batches
hold at most 32 inputs (27-30 in practice, with the cohort wait). The row of that size over the
one-call row bounds (c) / (b) from above, before any ZeroMQ hop or client costs anything; the
one-sentence p50 bounds (d)'s from below. ``make bench`` runs this command as its part (l).

The table goes to stdout, progress to stderr; ``--output FILE`` also writes the figures as JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import List, Optional, Sequence

from bert_serving.server.engine.base import Engine

from .compare import MAX_SEQ_LEN, SERVER_FLAGS
from .timing import LATENCY_WARM_UP, one_sentence_seconds, percentiles_ms, say

__all__ = ['DEFAULT_SIZES', 'main', 'measure', 'measure_latency']

DEFAULT_SIZES = (1, 2, 4, 8, 16, 28, 32, 56, 112, 224)
WARM_UP_CALLS = 3  # untimed calls of each size first (new shapes build their kernels)


def _engine(flags: List[str]) -> Engine:
    """The engine one CPU worker of a server started with ``flags`` runs: its threads, layer split
    and token budget as BertServer plans them for ``-num_worker`` CPU workers."""
    from bert_serving.server.args import get_args_parser
    from bert_serving.server.config import EngineConfig
    from bert_serving.server.engine.devices import (batch_token_budget, cpu_threads, planned_layer_shards,
                                                    session_threads)
    from bert_serving.server.engine.factory import create_engine

    args = get_args_parser().parse_args(flags)
    config = EngineConfig.from_namespace(args)
    threads = cpu_threads(args.num_worker)
    runtime = {'max_batch_size': args.max_batch_size, 'frozen_weights': True,
               'max_batch_tokens': batch_token_budget(-1, args.max_batch_tokens, args.max_batch_size,
                                                      config.max_seq_len)}
    if config.engine == 'tensorflow':
        from bert_serving.server.engine.runner import prefer_system_allocator
        from bert_serving.server.engine.tfimport import defer_public_api
        prefer_system_allocator()  # as a worker does, before TensorFlow loads
        defer_public_api()
        shards = planned_layer_shards(threads, False)
        config = dataclasses.replace(config, layer_shards=shards)
        runtime['intra_op_threads'], runtime['inter_op_threads'] = session_threads(threads, shards)
    return create_engine(config, **runtime)


def measure(engine: Engine, lines: Sequence[str], sizes: Sequence[int], min_sentences: int) -> List[dict]:
    """Times calls of each size, then one call of every line.

    Args:
        engine: a ready engine (warmed up).
        lines: the sentences, one input each.
        sizes: inputs a call, each at most ``len(lines)``; the calls of a size take consecutive
            lines from the first, wrapping around, ``min_sentences`` inputs at least, after
            WARM_UP_CALLS untimed ones.
        min_sentences: inputs timed per size, at least.

    Returns:
        One dict per size and a last one for all the lines in one call (``one_call``): calls,
        inputs, word pieces, wall seconds and process CPU seconds of the timed calls.
    """
    features = [engine.featurize([line])[0] for line in lines]
    n = len(features)
    rows = []
    for index, size in enumerate(list(sizes) + [n]):
        one_call = index == len(sizes)
        count = 1 if one_call else -(-max(min_sentences, size) // size)
        calls = [[features[(i * size + j) % n] for j in range(size)] for i in range(count)]
        for call in calls[:WARM_UP_CALLS]:
            engine.run(call)
        say(f'batch sizes: {len(calls)} calls of {size} inputs')
        cpu, wall = time.process_time(), time.perf_counter()
        for call in calls:
            engine.run(call)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rows.append({'size': size, 'one_call': one_call, 'calls': count, 'inputs': count * size,
                     'tokens': sum(len(f.input_ids) for c in calls for f in c), 'seconds': wall, 'cpu_seconds': cpu})
    return rows


def measure_latency(engine: Engine, lines: Sequence[str], requests: int) -> dict:
    """p50 and p99 (ms) of ``requests`` one-sentence ``engine.encode`` calls, back to back: what a
    search box's sentence costs with no service around the model. The same sentences run once
    untimed first (timing.LATENCY_WARM_UP at least): TensorFlow builds kernels for each shape it
    meets, and by the time (d) of ``make bench`` runs, the worker has met every one of them."""
    say(f'batch sizes: {requests} one-sentence calls, after an untimed pass over the same sentences')
    return percentiles_ms(one_sentence_seconds(engine.encode, list(lines), requests,
                                               max(LATENCY_WARM_UP, min(requests, len(lines)))))


def format_table(rows: List[dict]) -> str:
    """The table: per row, ms a call, word pieces a call, sentences/s, CPU ms a sentence and the
    share of the one-call rate (the last row, ``one_call``)."""
    whole = rows[-1]['inputs'] / rows[-1]['seconds']
    header = ['inputs a call', 'word pieces a call', 'ms a call', 'sentences/s', 'CPU ms a sentence', '/ one call']
    body = []
    for r in rows:
        rate = r['inputs'] / r['seconds']
        label = f'{r["size"]} (all in one call)' if r['one_call'] else str(r['size'])
        body.append([label, f'{r["tokens"] / r["calls"]:.0f}', f'{1000 * r["seconds"] / r["calls"]:.2f}',
                     f'{rate:.0f}', f'{1000 * r["cpu_seconds"] / r["inputs"]:.2f}', f'{rate / whole:.2f}'])
    widths = [max(len(x[i]) for x in [header] + body) for i in range(len(header))]
    lines = ['  '.join(c.rjust(w) for c, w in zip(x, widths)) for x in [header] + body]
    lines.insert(1, '  '.join('-' * w for w in widths))
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    """The command: prints the table; 0 on success (argparse exits 2 on bad options)."""
    parser = argparse.ArgumentParser(prog='python -m benchmarks.batch_sizes', allow_abbrev=False,
                                     description=__doc__.split('\n\n')[0])
    parser.add_argument('--sizes', default=','.join(map(str, DEFAULT_SIZES)),
                        help='inputs a call, comma-separated (the one call of every line comes last)')
    parser.add_argument('--lines', type=int, default=4096, help='corpus lines (the one call holds them all)')
    parser.add_argument('--min_sentences', type=int, default=600, help='sentences timed per size, at least')
    parser.add_argument('--latency_requests', type=int, default=0,
                        help='first time this many one-sentence calls (tokenizing included); 0 skips them')
    parser.add_argument('--output', default=None, help='also write the figures to this JSON file')
    args, server_flags = parser.parse_known_args(argv)
    if args.latency_requests < 0:
        parser.error(f'--latency_requests takes 0 or more, got {args.latency_requests}')
    try:
        sizes = [int(s) for s in args.sizes.split(',') if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1 or max(sizes) > args.lines:
        parser.error(f'--sizes takes positive integers up to --lines ({args.lines}), got {args.sizes!r}')
    from bert_serving.server.benchmark import load_sentences

    lines = load_sentences(None, limit=args.lines)
    flags = SERVER_FLAGS + server_flags
    say(f'batch sizes: loading the engine of {" ".join(flags)}')
    engine = _engine(flags)
    latency = None
    try:
        engine.warm_up()
        if args.latency_requests:
            latency = measure_latency(engine, lines, args.latency_requests)
        rows = measure(engine, lines, sizes, args.min_sentences)
    finally:
        engine.close()
    print(f'the model alone, {len(lines)} corpus lines, calls of N one-sentence inputs; flags: {" ".join(flags)}')
    if latency:
        print(f'one sentence a call, tokenizing included, {args.latency_requests} calls: '
              f'p50 {latency["p50_ms"]:.2f} ms, p99 {latency["p99_ms"]:.2f} ms')
    print(format_table(rows))
    if args.output:
        doc = {'date': time.strftime('%Y-%m-%dT%H:%M:%S'), 'flags': flags, 'max_seq_len': MAX_SEQ_LEN, 'rows': rows,
               'latency': latency}
        with open(args.output, 'w', encoding='utf-8') as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
