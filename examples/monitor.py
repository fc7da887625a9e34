"""Watch a running server: its workers, the requests it has served and, over HTTP, its metrics.

Start a server first, in another shell (with -http_port for the HTTP part):

    make serve ARGS='-http_port 8125'          # or: bert-serving-start -http_port 8125

then run, from the repository root:

    .venv/bin/python examples/monitor.py --interval 5 --http_port 8125

Every --interval seconds it asks the server for its status (BertClient.server_status, the same
SHOW_STATUS that the dashboard at http://localhost:8125/ polls) and prints one line: ready workers,
requests and sentences so far, the rate since the previous line, and the server's own figures over
the last minute (latency p50 / p99, and the mean time an answered request waited for a worker and
spent in the model). With --http_port it also prints /health and the server's metrics of /metrics
(the Prometheus text, histogram buckets left out) once at the start.
--num stops after that many lines; 0 runs until Ctrl-C.
"""
from __future__ import annotations

import itertools
import json
import time
import urllib.error
import urllib.request

from bert_serving.client import BertClient

from cli import client_kwargs, example_parser


def http_get(url: str, timeout: float):
    """``(status, body text)``; an error status such as 503 is returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode('utf-8')
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read().decode('utf-8')


def show_http(base: str, timeout: float) -> None:
    status, body = http_get(f'{base}/health', timeout)
    print(f'GET /health -> {status} {json.loads(body)}')
    status, body = http_get(f'{base}/metrics', timeout)
    server_lines = [line for line in body.splitlines()
                    if line.startswith(('bert_server_', 'bert_worker_')) and '_bucket{' not in line]
    print(f'GET /metrics -> {status}, {len(body.splitlines())} lines, of which the server\'s:')
    for line in server_lines:
        print(f'  {line}')


def last_minute(status: dict) -> str:
    """The server's latency and where the time went over the last minute ('' from a server without them)."""
    m = (status.get('metrics') or {}).get('last_minute') or {}
    if m.get('latency_p50') is None:
        return ''
    return (f'; last minute: p50 {1000 * m["latency_p50"]:.1f} ms, p99 {1000 * m["latency_p99"]:.1f} ms, '
            f'queue {1000 * m["queue_seconds_avg"]:.1f} ms, model {1000 * m["model_seconds_avg"]:.1f} ms')


def main():
    parser = example_parser(__doc__, num=0, num_help='status lines to print before stopping; 0: until Ctrl-C')
    parser.add_argument('--interval', type=float, default=5.0, help='seconds between lines (default: %(default)s)')
    parser.add_argument('--http_port', type=int, help='also read /health and /metrics from this proxy port')
    args = parser.parse_args()

    with BertClient(**client_kwargs(args)) as bc:
        config = bc.server_config
        # server_version is the wire release a 1.10 client expects; newer servers add their own release.
        release = config.get('server_release', config['server_version'])
        print(f'server {release} at {args.ip}:{args.port}, model {config["model_dir"]}, '
              f'{config["pooling_strategy"]} of layers {config["pooling_layer"]}, max_seq_len {config["max_seq_len"]}, '
              f'{config["output_dim"]} values per sentence, workers on {config["worker_devices"]}')
        if args.http_port:
            show_http(f'http://{args.ip}:{args.http_port}', args.timeout / 1000)
        previous = None
        try:
            for line in itertools.count(1):
                status = bc.server_status
                stats = status['statistic']
                now = (time.monotonic(), stats['num_data_request'], stats['num_total_seq'])
                rate = '' if previous is None else (
                    f', {(now[2] - previous[2]) / (now[0] - previous[0]):.1f} sentences/s since the last line')
                print(f'{time.strftime("%H:%M:%S")} workers ready {status["num_ready_worker"]}/{status["num_worker"]}, '
                      f'{now[1]} requests, {now[2]} sentences, {status["num_queued_piece"]} pieces queued, '
                      f'batches per worker {status["batches_per_worker"]}{rate}{last_minute(status)}', flush=True)
                previous = now
                if line == args.num:
                    break
                time.sleep(args.interval)
        except KeyboardInterrupt:
            pass


if __name__ == '__main__':
    main()
