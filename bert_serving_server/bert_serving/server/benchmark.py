"""bert-serving-benchmark: the original's experiments, against servers started in this process.

A baseline configuration comes from the flags. Each experiment varies one variable over its
``-test_*`` list and keeps the rest at the baseline:

    client_batch_size, num_client                  client side: one server serves every value
    max_batch_size, max_seq_len, pooling_layer     server side: a server per value

For every value, ``-num_client`` threads (each its own BertClient) send the same
``-client_batch_size`` sentences ``-num_repeat`` times; the first two requests of each client are
warm-up and dropped. A row reports the mean over clients of sentences per second, as the original
did, the mean request latency, and the sum over clients.

The servers bind free ports (or ``-port``/``-port_out``); at most one runs at a time, and every one
is closed, whatever happens.
"""
from __future__ import annotations

import copy
import csv
import json
import os
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path
from statistics import mean
from typing import List, Optional, Sequence

from bert_serving.client.errors import BertServingError

from .args import BENCHMARK_EXPERIMENTS, get_args_parser, get_benchmark_parser
from .log import get_logger

__all__ = ['run_benchmark', 'Row', 'load_sentences', 'default_corpus']

CLIENT_SIDE = frozenset({'client_batch_size', 'num_client'})
WARM_UP = 2  # requests dropped per client: the first ones pay for connection and cold caches
CORPUS_LINES = 4096
CLIENT_TIMEOUT_MS = 600_000


@dataclass
class Row:
    """One value of one experiment. Speeds are sentences per second; None unless status is 'ok'."""
    experiment: str
    value: str
    samples_per_second: Optional[float] = None
    min_samples_per_second: Optional[float] = None
    max_samples_per_second: Optional[float] = None
    total_samples_per_second: Optional[float] = None
    latency_ms: Optional[float] = None
    status: str = 'ok'
    note: str = ''


# -- inputs ---------------------------------------------------------------------------------
def default_corpus() -> Path:
    """The default client sentences, shipped in the package: the first 4,096 lines of the project's
    standard bench corpus (sentences of Python's documentation), so that ``bert-serving-benchmark``
    works after a plain ``pip install``."""
    return Path(__file__).resolve().parent / 'data' / 'bench_sentences.txt'


def load_sentences(path: Optional[str], limit: Optional[int] = None) -> List[str]:
    """The non-empty lines of ``path`` (default: the first 4,096 lines of the bench corpus).

    Raises:
        BertServingError: the file is missing or holds no text.
    """
    if path is None:
        source, limit = default_corpus(), limit or CORPUS_LINES
        if not source.is_file():
            raise BertServingError(f'the packaged bench sentences are missing ({source}): reinstall '
                                   'bert-serving-server, or pass -client_vocab_file FILE')
    else:
        source = Path(path)
    try:
        with open(source, encoding='utf-8') as f:
            lines = [line.strip() for line in f]
    except OSError as e:
        raise BertServingError(f'cannot read the client sentences from {source}: {e}') from e
    lines = [line for line in lines if line][:limit]
    if not lines:
        raise BertServingError(f'{source} holds no sentences; -client_vocab_file needs one per line')
    return lines


def _batch(sentences: Sequence[str], size: int, client: int) -> List[str]:
    # Clients read consecutive slices, so concurrent clients do not send identical requests.
    start = client * size
    return [sentences[(start + k) % len(sentences)] for k in range(size)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


# -- progress -------------------------------------------------------------------------------
class _Progress:
    """Requests done, on stderr: tqdm when installed, else a plain bar. Thread-safe."""

    def __init__(self, total: int):
        self._lock = threading.Lock()
        self._done, self._total, self._label = 0, total, ''
        try:
            from tqdm import tqdm
        except ImportError:
            self._bar = None
        else:
            self._bar = tqdm(total=total, unit='req', file=sys.stderr, dynamic_ncols=True)

    def label(self, text: str) -> None:
        with self._lock:
            self._label = text
            if self._bar is not None:
                self._bar.set_description(text)
            else:
                self._draw()

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self._done += n
            if self._bar is not None:
                self._bar.update(n)
            else:
                self._draw()

    def _draw(self) -> None:
        width = 30
        filled = width * self._done // max(1, self._total)
        sys.stderr.write(f'\r{self._label:<28} [{"#" * filled}{"." * (width - filled)}] '
                         f'{self._done}/{self._total} requests')
        sys.stderr.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        else:
            sys.stderr.write('\n')


# -- servers --------------------------------------------------------------------------------
class _Servers:
    """Holds at most one BertServer, restarted only when a server-side flag changes."""

    def __init__(self, wait_till_ready: float, logger):
        self._wait, self._logger = wait_till_ready, logger
        self._server_fields = sorted(vars(get_args_parser().parse_args([])))
        self._server, self._key, self._ports = None, None, None

    def ports(self, args):
        """Starts (or keeps) a server for ``args``; returns its (port, port_out).

        Raises:
            BertServingError: the server failed to start or was not ready within -wait_till_ready.
        """
        key = tuple(repr(getattr(args, k)) for k in self._server_fields if k not in ('port', 'port_out'))
        if self._server is not None and key == self._key and self._server.is_alive():
            return self._ports
        self.close()
        from .service import BertServer
        sargs = copy.copy(args)
        sargs.port = args.port or _free_port()
        sargs.port_out = args.port_out or _free_port()
        server = BertServer(sargs)
        self._server, self._key, self._ports = server, key, (sargs.port, sargs.port_out)
        server.start()
        deadline = time.monotonic() + self._wait
        while not server.is_ready.wait(0.2):
            if server.failure or not server.is_alive():
                raise BertServingError(f'the server stopped: {server.failure}')
            if time.monotonic() > deadline:
                raise BertServingError(f'the server was not ready after {self._wait}s; raise -wait_till_ready')
        return self._ports

    def close(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.close()

    def __enter__(self) -> '_Servers':
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- clients --------------------------------------------------------------------------------
class _Client(threading.Thread):
    """Sends one batch ``repeat`` times through its own BertClient and keeps the durations."""

    def __init__(self, ports, batch: List[str], repeat: int, start_line: threading.Barrier, progress: _Progress):
        super().__init__(daemon=True)
        self.ports, self.batch, self.repeat = ports, batch, repeat
        self.start_line, self.progress = start_line, progress
        self.seconds: List[float] = []
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        from bert_serving.client import BertClient
        try:
            with BertClient(port=self.ports[0], port_out=self.ports[1], check_length=False,
                            timeout=CLIENT_TIMEOUT_MS) as bc:
                self.start_line.wait(timeout=CLIENT_TIMEOUT_MS / 1000)  # all clients start together
                for _ in range(self.repeat):
                    t0 = time.perf_counter()
                    bc.encode(self.batch)
                    self.seconds.append(time.perf_counter() - t0)
                    self.progress.advance()
        except BaseException as e:  # reported in the row; the others must not wait for us
            self.error = e
            self.start_line.abort()


def _measure(args, ports, sentences, progress: _Progress, experiment: str, shown: str) -> Row:
    start_line = threading.Barrier(args.num_client)
    clients = [_Client(ports, _batch(sentences, args.client_batch_size, i), args.num_repeat, start_line, progress)
               for i in range(args.num_client)]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    errors = [c.error for c in clients if c.error is not None]
    if errors:
        # A broken start line only says that another client failed first.
        first = ([e for e in errors if not isinstance(e, threading.BrokenBarrierError)] or errors)[0]
        raise BertServingError(f'a client failed: {type(first).__name__}: {first}') from first
    latencies = [mean(c.seconds[WARM_UP:]) for c in clients]
    speeds = [args.client_batch_size / s for s in latencies]
    return Row(experiment, shown, samples_per_second=mean(speeds), min_samples_per_second=min(speeds),
               max_samples_per_second=max(speeds), total_samples_per_second=sum(speeds),
               latency_ms=1000 * mean(latencies))


# -- experiments ----------------------------------------------------------------------------
def _values(args, experiment: str) -> list:
    values = getattr(args, f'test_{experiment}') or []
    if experiment == 'pooling_layer':  # defaults are [[-1], [-2], ...]; given values are ints
        return [[v] if isinstance(v, int) else list(v) for v in values]
    return list(values)


def _show(value) -> str:
    return ' '.join(map(str, value)) if isinstance(value, list) else str(value)


def _model_depth(args) -> int:
    from .engine.checkpoint import load_bert_config, locate_model
    from .config import EngineConfig
    return load_bert_config(locate_model(EngineConfig.from_namespace(args))).num_hidden_layers


def _run_experiment(args, experiment, servers: _Servers, sentences, progress, logger) -> List[Row]:
    rows = []
    depth = _model_depth(args) if experiment == 'pooling_layer' else None
    for value in _values(args, experiment):
        shown = _show(value)
        if depth is not None and not all(-depth <= v < depth for v in value):
            note = f'the model has {depth} layers (-{depth} to {depth - 1})'
            logger.warning('pooling_layer %s skipped: %s', shown, note)
            rows.append(Row(experiment, shown, status='skipped', note=note))
            progress.advance(args.num_repeat * args.num_client)
            continue
        cargs = copy.copy(args)
        setattr(cargs, experiment, value)
        progress.label(f'{experiment}={shown}')
        try:
            rows.append(_measure(cargs, servers.ports(cargs), sentences, progress, experiment, shown))
        except (BertServingError, ValueError, OSError) as e:
            logger.error('%s=%s failed: %s', experiment, shown, e)
            servers.close()
            rows.append(Row(experiment, shown, status='error', note=str(e)))
    return rows


def _planned_requests(args, experiments) -> int:
    total = 0
    for name in experiments:
        for value in _values(args, name):
            total += args.num_repeat * (value if name == 'num_client' else args.num_client)
    return total


# -- reporting ------------------------------------------------------------------------------
def format_table(experiment: str, rows: Sequence[Row]) -> str:
    """A Markdown table of one experiment: value, mean samples/s per client, latency, all clients."""
    header = [experiment, 'samples/s', 'latency ms', 'all clients samples/s']
    body = []
    for r in rows:
        if r.status == 'ok':
            body.append([r.value, f'{r.samples_per_second:.0f}', f'{r.latency_ms:.1f}',
                         f'{r.total_samples_per_second:.0f}'])
        else:
            body.append([r.value, r.status, r.note, ''])
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    lines = ['| ' + ' | '.join(c.rjust(w) for c, w in zip(line, widths)) + ' |' for line in [header] + body]
    lines.insert(1, '|' + '|'.join('-' * (w + 1) + ':' for w in widths) + '|')
    return '\n'.join(lines)


def _baseline(args) -> dict:
    skip = {'output', 'plot', 'experiments'} | {k for k in vars(args) if k.startswith('test_')}
    return {k: (v if isinstance(v, (int, float, str, bool, type(None), list)) else str(v))
            for k, v in sorted(vars(args).items()) if k not in skip}


def write_results(path: str, rows: Sequence[Row], args, source: str) -> None:
    """Writes the rows to ``path``: JSON (with the baseline flags) or CSV, by its extension."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == '.csv':
        with open(out, 'w', newline='', encoding='utf-8') as f:
            writer = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(Row)])
            writer.writeheader()
            writer.writerows(asdict(r) for r in rows)
        return
    doc = {'tool': 'bert-serving-benchmark', 'date': datetime.now().isoformat(timespec='seconds'),
           'sentences': source, 'warm_up_requests_dropped': WARM_UP,
           'baseline': _baseline(args), 'results': [asdict(r) for r in rows]}
    out.write_text(json.dumps(doc, indent=2) + '\n', encoding='utf-8')


def plot_results(path: str, rows: Sequence[Row], logger) -> bool:
    """Draws samples/s against the value, one panel per experiment. False if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning('-plot needs matplotlib: pip install "bert-serving-server[bench]"; no plot drawn')
        return False
    names = [n for n in BENCHMARK_EXPERIMENTS if any(r.experiment == n and r.status == 'ok' for r in rows)]
    if not names:
        return False
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        ok = [r for r in rows if r.experiment == name and r.status == 'ok']
        ax.plot(range(len(ok)), [r.samples_per_second for r in ok], marker='o')
        ax.set_xticks(range(len(ok)), [r.value for r in ok])
        ax.set_xlabel(name)
        ax.set_ylabel('samples/s')
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


# -- entry point ----------------------------------------------------------------------------
def run_benchmark(argv: Optional[List[str]] = None) -> int:
    """``bert-serving-benchmark``: runs the experiments, prints a table per experiment.

    Returns:
        0 if every value was measured (or skipped as out of range), 1 if any failed, 130 on Ctrl-C.
    """
    parser = get_benchmark_parser()
    args = parser.parse_args(argv)
    if args.num_repeat <= WARM_UP:
        parser.error(f'-num_repeat must be more than {WARM_UP}: the first {WARM_UP} requests are warm-up')
    if args.output and Path(args.output).suffix.lower() not in ('.json', '.csv'):
        parser.error(f'-output must end in .json or .csv, got {args.output}')
    for name in ('num_client', 'client_batch_size'):
        if getattr(args, name) < 1 or any(v < 1 for v in getattr(args, f'test_{name}') or []):
            parser.error(f'-{name} and -test_{name} values must be at least 1')
    if not args.verbose:  # before TensorFlow is imported: keep its start-up chatter out of the tables
        os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    logger = get_logger('BENCHMARK', args.verbose)
    try:
        sentences = load_sentences(args.client_vocab_file)
    except BertServingError as e:
        logger.error('%s', e)
        return 2
    source = args.client_vocab_file or str(default_corpus())
    experiments = [n for n in BENCHMARK_EXPERIMENTS if n in args.experiments and _values(args, n)]
    logger.info('%d sentences from %s; experiments: %s', len(sentences), source, ' '.join(experiments))

    rows: List[Row] = []
    progress = _Progress(_planned_requests(args, experiments))
    code = 0
    try:
        with _Servers(args.wait_till_ready, logger) as servers:
            for name in experiments:
                done = _run_experiment(args, name, servers, sentences, progress, logger)
                rows.extend(done)
                # Keep the server only while the next experiment can reuse it.
                if name not in CLIENT_SIDE:
                    servers.close()
                sys.stderr.flush()
                print(f'\n{format_table(name, done)}\n', flush=True)
    except KeyboardInterrupt:
        logger.warning('interrupted; results so far are kept')
        code = 130
    finally:
        progress.close()
        if rows and args.output:
            write_results(args.output, rows, args, source)
            logger.info('results written to %s', args.output)
        if rows and args.plot and plot_results(args.plot, rows, logger):
            logger.info('plot written to %s', args.plot)
    if code == 0 and any(r.status == 'error' for r in rows):
        code = 1
    return code
