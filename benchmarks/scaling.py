"""How throughput grows with workers: one server with 1 and 2 local workers, and 1 local + 1 remote
worker (bert-serving-worker over loopback TCP), on the bundled model. Prints a table.

    PYTHONPATH=bert_serving_server:bert_serving_client .venv/bin/python -m benchmarks.scaling [--lines 2048]

Each setup: the first --lines sentences of the bench corpus in one request (best of --repeat), and
8 concurrent clients sending 64-sentence requests. Figures depend on the machine's cores: workers
on one CPU share its cores (each gets cores / workers threads).
"""
from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
import time
from typing import List

from bert_serving.client import BertClient
from bert_serving.server.args import get_args_parser
from bert_serving.server.benchmark import load_sentences
from bert_serving.server.service import BertServer

READY_SECONDS = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _one_client(port: int, port_out: int, lines: List[str], repeat: int) -> float:
    best = float('inf')
    with BertClient(port=port, port_out=port_out, timeout=600000) as bc:
        bc.encode(lines[:64])  # warm-up
        for _ in range(repeat):
            t0 = time.perf_counter()
            bc.encode(lines)
            best = min(best, time.perf_counter() - t0)
    return len(lines) / best


def _many_clients(port: int, port_out: int, lines: List[str], clients: int = 8, size: int = 64) -> float:
    chunks = [lines[i:i + size] for i in range(0, len(lines), size)]
    def run(k):
        with BertClient(port=port, port_out=port_out, timeout=600000) as bc:
            for chunk in chunks[k::clients]:
                bc.encode(chunk)
    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(lines) / (time.perf_counter() - t0)


def measure(label: str, num_worker: int, remote: bool, lines: List[str], repeat: int) -> dict:
    port, port_out, port_worker = _free_port(), _free_port(), _free_port()
    flags = ['-port', str(port), '-port_out', str(port_out), '-num_worker', str(num_worker), '-cpu']
    if remote:
        flags += ['-port_worker', str(port_worker), '-port_worker_sink', str(_free_port())]
    server = BertServer(get_args_parser().parse_args(flags))
    worker = None
    with server:
        if remote:
            worker = subprocess.Popen([sys.executable, '-c', 'import sys; from bert_serving.server.cli import worker; '
                                       'sys.exit(worker())', '-cpu', '-ip', '127.0.0.1', '-port_worker', str(port_worker)])
            deadline = time.monotonic() + READY_SECONDS
            while len(server.scheduler.workers) < num_worker + 1:
                if time.monotonic() > deadline:
                    raise RuntimeError('the remote worker did not join')
                time.sleep(0.5)
        try:
            print(f'{label}: measuring...', file=sys.stderr, flush=True)
            one = _one_client(port, port_out, lines, repeat)
            many = _many_clients(port, port_out, lines)
        finally:
            if worker is not None:
                worker.terminate()
                worker.wait(30)
    return {'setup': label, 'one': one, 'many': many}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--lines', type=int, default=2048)
    parser.add_argument('--repeat', type=int, default=3)
    opts = parser.parse_args()
    lines = load_sentences(None, limit=opts.lines)
    rows = [measure('1 local worker', 1, False, lines, opts.repeat),
            measure('2 local workers', 2, False, lines, opts.repeat),
            measure('1 local + 1 remote (loopback TCP)', 1, True, lines, opts.repeat)]
    print(f'{"setup":<36} {"one client, sent/s":>20} {"8 clients, sent/s":>20}')
    for r in rows:
        print(f'{r["setup"]:<36} {r["one"]:>20.0f} {r["many"]:>20.0f}')


if __name__ == '__main__':
    main()
