"""Where one sentence's time goes: ``python -m benchmarks.timeline [--requests N] [server flags...]``.

Sends N one-sentence requests, one after the other (``--pause_ms``: each after that long idle), to a
server on the bench's standard workload (bundled model, ``-max_seq_len 128 -pooling_layer -1``, one
worker, plus any flags given), and splits the mean round trip into stages from the server's own
request metrics (SHOW_STATUS ``metrics``: exact sums and counts, read before and after). Then, in this
process, the same model alone: the tokenizer, the padded model call through ``Encoder.run``, and the
bare session call, so the model stage splits into TensorFlow and the rest.

Stages (means over the N requests, milliseconds)::

    client + its two hops     round trip - server time: packing, ZeroMQ client -> ventilator and
                              sink -> client, unpacking
    server: queue             the ventilator's part (received -> its batch taken for a worker) plus
                              the worker's (batch arrived -> model started: parse, tokenize, two
                              thread hand-offs)
    server: model             the model calls of the request
    server: worker hops       the rest of the server time: the batch's hop to the worker, the
                              results' packing and hop to the sink, the sink's parse
    server: sink              last piece arrived -> reply handed to the XPUB socket

The table goes to stdout, progress to stderr; ``--output FILE`` also writes the figures as JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Dict, List, Optional

from .compare import MAX_SEQ_LEN, SERVER_FLAGS
from .service_peer import CLIENT_TIMEOUT_MS, start_server
from .timing import one_sentence_seconds, say

__all__ = ['main', 'server_stages']

_STAGES = ('request_duration_seconds', 'request_queue_seconds', 'request_model_seconds', 'request_sink_seconds')


def _sums(status: dict) -> Dict[str, tuple]:
    """(sum, count) of each stage's histogram for answered ZeroMQ requests."""
    out = {}
    for name in _STAGES:
        for series in status['metrics']['histograms'][name]['series']:
            labels = series['labels']
            if labels.get('door') == 'zmq' and labels.get('outcome', 'ok') == 'ok':
                out[name] = (series['sum'], series['count'])
    return out


def server_stages(before: dict, after: dict) -> Dict[str, float]:
    """Mean seconds of each server stage between two SHOW_STATUS replies."""
    a, b = _sums(before), _sums(after)
    means = {}
    for name in _STAGES:
        count = b[name][1] - a[name][1]
        means[name] = (b[name][0] - a[name][0]) / count if count else float('nan')
    return means


def _in_process(lines: List[str], flags: List[str], requests: int, pause: float = 0.0) -> Dict[str, float]:
    """p50 seconds of the tokenizer, Encoder.run and the bare session call on one sentence (each
    after ``pause`` seconds idle)."""
    import dataclasses

    from bert_serving.server.args import get_args_parser
    from bert_serving.server.config import EngineConfig
    from bert_serving.server.engine.devices import cpu_threads, planned_layer_shards
    from bert_serving.server.engine.encoder import Encoder
    from bert_serving.server.engine.features import pad_batch

    # As BertServer plans it for one CPU worker (the layer split depends on the worker's cores).
    engine_config = dataclasses.replace(EngineConfig.from_namespace(get_args_parser().parse_args(flags)),
                                        layer_shards=planned_layer_shards(cpu_threads(1), False))
    encoder = Encoder(engine_config)
    try:
        encoder.warm_up()
        tokenize, run, bare = [], [], []
        for i in range(requests):
            text = [lines[i % len(lines)]]
            if pause:
                time.sleep(pause)
            t0 = time.perf_counter()
            features = encoder.featurize(text)
            t1 = time.perf_counter()
            encoder.run(features)
            t2 = time.perf_counter()
            arrays = pad_batch(features, len(features[0].input_ids))
            if pause:
                time.sleep(pause)
            t3 = time.perf_counter()
            encoder.runner(*arrays)
            bare.append(time.perf_counter() - t3)
            tokenize.append(t1 - t0)
            run.append(t2 - t1)
    finally:
        encoder.close()
    return {'tokenize': statistics.median(tokenize), 'encoder_run': statistics.median(run),
            'session_call': statistics.median(bare)}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m benchmarks.timeline', allow_abbrev=False,
                                     description=__doc__.split('\n\n')[0])
    parser.add_argument('--requests', type=int, default=200, help='one-sentence round trips (after 20 untimed)')
    parser.add_argument('--output', default=None, help='also write the figures to this JSON file')
    parser.add_argument('--no_in_process', action='store_true', help='skip the in-process model timings')
    parser.add_argument('--pause_ms', type=float, default=0.0,
                        help='idle time before each timed request and in-process call (0: back to back)')
    args, server_flags = parser.parse_known_args(argv)
    from bert_serving.client import BertClient
    from bert_serving.server.benchmark import default_corpus, load_sentences

    lines = load_sentences(default_corpus(), args.requests + 20)
    flags = SERVER_FLAGS + server_flags
    say(f'timeline: starting a server with {" ".join(flags)}')
    server, ready = start_server(flags)
    try:
        with BertClient(port=server.args.port, port_out=server.args.port_out, check_length=False,
                        timeout=CLIENT_TIMEOUT_MS) as bc:
            one_sentence_seconds(bc.encode, lines, 0, 20)  # untimed warm-up, before the first status
            before = bc.server_status
            say(f'timeline: {args.requests} one-sentence round trips')
            round_trips = one_sentence_seconds(bc.encode, lines[20:], args.requests, 0, args.pause_ms / 1000)
            after = bc.server_status
    finally:
        server.close()
    stages = server_stages(before, after)
    in_process = {} if args.no_in_process else _in_process(lines, flags, args.requests, args.pause_ms / 1000)

    mean_rt = statistics.fmean(round_trips)
    duration = stages['request_duration_seconds']
    queue, model, sink = (stages[k] for k in ('request_queue_seconds', 'request_model_seconds',
                                              'request_sink_seconds'))
    rows = [('round trip (client)', mean_rt),
            ('  client + its two hops', mean_rt - duration),
            ('  server: queue (schedule, tokenize)', queue),
            ('  server: model', model),
            ('  server: worker hops (to it, to the sink)', duration - queue - model - sink),
            ('  server: sink', sink)]
    if in_process:
        rows += [('in process, p50: tokenize', in_process['tokenize']),
                 ('in process, p50: Encoder.run', in_process['encoder_run']),
                 ('in process, p50: session call', in_process['session_call'])]
    paced = f', each after {args.pause_ms:g} ms idle' if args.pause_ms else ''
    print(f'one sentence, {args.requests} round trips{paced}; flags: {" ".join(flags)}')
    print(f'round trip p50 {1000 * statistics.median(round_trips):.2f} ms, mean {1000 * mean_rt:.2f} ms')
    print(f'{"stage":<45} {"ms":>7}')
    for name, seconds in rows:
        print(f'{name:<45} {1000 * seconds:7.2f}')
    if args.output:
        doc = {'date': time.strftime('%Y-%m-%dT%H:%M:%S'), 'flags': flags, 'requests': args.requests,
               'pause_ms': args.pause_ms,
               'max_seq_len': MAX_SEQ_LEN, 'round_trip_p50_s': statistics.median(round_trips),
               'stages_mean_s': dict(rows), 'server_ready_s': ready}
        with open(args.output, 'w', encoding='utf-8') as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
