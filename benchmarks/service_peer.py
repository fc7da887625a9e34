"""The service as ``make bench`` runs it: a BertServer in its own process (as ``bert-serving-start``
runs it), and (b) one client, (c) many one-sentence clients, (d) one-sentence round trips and (g)
HTTP clients against it, with the RSS of its processes.

The server process binds ``-port`` and ``-port_out`` on free ports (or the ones given in the
flags); each measurement connects its own ``BertClient`` (or aiohttp sessions to ``-http_port``).
"""
from __future__ import annotations

import os
import socket
import threading
import time
from typing import Dict, List, Optional

from .timing import LATENCY_WARM_UP, one_sentence_latencies, percentiles_ms, say, timed

__all__ = ['CLIENT_TIMEOUT_MS', 'ServerProcess', 'free_port', 'measure_http', 'measure_latency', 'measure_many_clients',
           'measure_one_client', 'start_server', 'worker_memory_mb']

READY_TIMEOUT_S = 600
CLIENT_TIMEOUT_MS = 600_000


def worker_memory_mb(server, processes: Optional[List] = None) -> Dict[str, Dict[str, float]]:
    """VmRSS and VmHWM (peak) of each live worker process of ``server`` (or of ``processes``,
    (name, pid) pairs), in MiB, and the RSS split into anonymous memory (the process's own) and
    file pages (mostly TensorFlow's libraries, which workers on one machine share)."""
    out = {}
    for name, pid in (server.workers if processes is None else processes):
        status = {}
        try:
            with open(f'/proc/{pid}/status', encoding='ascii') as f:
                for line in f:
                    key, _, rest = line.partition(':')
                    if key in ('VmRSS', 'VmHWM', 'RssAnon', 'RssFile'):
                        status[key] = int(rest.split()[0]) / 1024  # kB -> MiB
        except OSError:
            continue
        out[f'{name} (pid {pid})'] = {'rss_mb': status.get('VmRSS'), 'peak_mb': status.get('VmHWM'),
                                      'anon_mb': status.get('RssAnon'), 'file_mb': status.get('RssFile')}
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _serve(flags: List[str], replies, stop) -> None:
    """Body of the server process: a BertServer that runs until ``stop`` is set."""
    from bert_serving.server.args import get_args_parser
    from bert_serving.server.service import BertServer

    server = None
    try:
        server = BertServer(get_args_parser().parse_args(flags))
        server.start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not server.is_ready.wait(0.05):
            if server.failure or not server.is_alive() or time.monotonic() > deadline:
                replies.put({'failure': server.failure or 'timed out'})
                server.close()
                return
    except Exception as e:  # noqa: BLE001 - the parent reports it; a started server must not keep this process
        replies.put({'failure': f'{type(e).__name__}: {e}'})
        if server is not None:
            server.close()
        return
    replies.put({'workers': [(p.name, p.pid) for p in server.processes if p.name.startswith('WORKER')],
                 'others': [('SERVER', os.getpid())] + [(p.name, p.pid) for p in server.processes
                                                        if not p.name.startswith('WORKER')]})
    stop.wait()
    server.close()


class ServerProcess:
    """A BertServer in its own process, as ``bert-serving-start`` runs it, so that the
    benchmark's client threads never share a GIL with the ventilator."""

    def __init__(self, flags: List[str]):
        import multiprocessing
        ctx = multiprocessing.get_context('spawn')
        self.port = free_port() if not {'-port', '-port_in', '-port_data'} & set(flags) else None
        self.port_out = free_port() if not {'-port_out', '-port_result'} & set(flags) else None
        extra = (['-port', str(self.port)] if self.port else []) + \
                (['-port_out', str(self.port_out)] if self.port_out else [])
        from bert_serving.server.args import get_args_parser
        self.args = get_args_parser().parse_args(flags + extra)
        self._replies, self._stop = ctx.Queue(), ctx.Event()
        self._proc = ctx.Process(target=_serve, args=(flags + extra, self._replies, self._stop), daemon=False)
        self.workers: List = []
        self.others: List = []  # the server's own process (ventilator), sink, proxy

    def start(self) -> float:
        """Starts the server; returns the seconds until every worker is ready. With -http_port it
        also waits until the HTTP proxy answers."""
        t0 = time.perf_counter()
        self._proc.start()
        reply = self._ready_reply(time.monotonic() + READY_TIMEOUT_S + 30)
        if 'failure' in reply:
            self.close()
            raise RuntimeError(f'the server did not become ready: {reply["failure"]}')
        self.workers = reply['workers']
        self.others = reply.get('others', [])
        ready = time.perf_counter() - t0
        if self.args.http_port:
            self._wait_for_http(max(t0 + READY_TIMEOUT_S, time.perf_counter() + 60))
        return ready

    def _ready_reply(self, deadline: float) -> dict:
        """The server process's first reply; a failure when it ends without one (it could not even
        start: e.g. a script that runs the benchmark without an ``if __name__ == '__main__'`` guard,
        under the spawn start method) or by ``deadline``."""
        import queue
        while True:
            try:
                return self._replies.get(timeout=0.5)
            except queue.Empty:
                if not self._proc.is_alive():
                    try:  # it may have replied just before it ended
                        return self._replies.get(timeout=0.5)
                    except queue.Empty:
                        return {'failure': f'its process ended (exit code {self._proc.exitcode}) before it '
                                           f'was ready; see its output above'}
                if time.monotonic() > deadline:
                    return {'failure': 'no reply before the deadline'}

    def _wait_for_http(self, deadline: float) -> None:
        """Waits until the HTTP proxy answers /health with 200. The server is ready when its workers
        are; the proxy is a process of its own that may still be starting on a busy machine."""
        from urllib.request import urlopen
        while True:
            try:
                with urlopen(f'http://127.0.0.1:{self.args.http_port}/health', timeout=5):
                    return
            except OSError as e:  # refused, 503 while it starts (HTTPError), timed out
                if time.perf_counter() > deadline:
                    self.close()
                    raise RuntimeError(f'the HTTP proxy on port {self.args.http_port} did not answer /health '
                                       f'with 200 ({e})') from e
            time.sleep(0.1)

    def close(self) -> None:
        self._stop.set()
        self._proc.join(timeout=30)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()


def start_server(flags: List[str]):
    """Starts a server process; returns (server, seconds from launch to ready)."""
    server = ServerProcess(flags)
    return server, server.start()


def _client(server):
    from bert_serving.client import BertClient
    return BertClient(port=server.args.port, port_out=server.args.port_out, check_length=False,
                      timeout=CLIENT_TIMEOUT_MS)


def measure_one_client(server, lines: List[str], repeat: int, tag: str = '(b)') -> dict:
    with _client(server) as bc:
        say(f'{tag} one client: warm-up encode of {len(lines)} sentences')
        bc.encode(lines)
        seconds = []
        for i in range(repeat):
            say(f'{tag} one client: {len(lines)} sentences in one encode, run {i + 1}/{repeat}')
            elapsed, vectors = timed(lambda: bc.encode(lines))
            seconds.append(elapsed)
    return {'b_sentences_per_s': len(lines) / min(seconds), 'vectors': vectors}


def measure_many_clients(server, lines: List[str], num_clients: int, tag: str = '(c)') -> dict:
    say(f'{tag} {num_clients} clients, one sentence per request, {len(lines)} in all')
    clients = [_client(server) for _ in range(num_clients)]  # handshakes stay out of the timing
    start = {}
    start_line = threading.Barrier(num_clients, action=lambda: start.setdefault('t', time.perf_counter()))
    ends, errors = [0.0] * num_clients, []

    def send(i: int) -> None:
        try:
            start_line.wait(timeout=60)
            for sentence in lines[i::num_clients]:
                clients[i].encode([sentence])
            ends[i] = time.perf_counter()
        except Exception as e:  # noqa: BLE001 - reported after the join
            errors.append(e)
            start_line.abort()

    threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(num_clients)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for bc in clients:
            bc.close()
    if errors:
        raise RuntimeError(f'{tag} a client failed: {errors[0]!r}') from errors[0]
    return {'c_sentences_per_s': len(lines) / (max(ends) - start['t'])}


def measure_latency(server, lines: List[str], requests: int, tag: str = '(d)') -> dict:
    with _client(server) as bc:
        seconds, paced = one_sentence_latencies(bc.encode, lines, requests, LATENCY_WARM_UP, f'{tag} service')
    return {'service_latency': percentiles_ms(seconds), 'service_latency_paced': percentiles_ms(paced)}


def measure_http(http_port: int, lines: List[str], num_clients: int) -> dict:
    """(g) ``num_clients`` concurrent clients, each with its own keep-alive connection, one sentence per
    POST /v1/embeddings, ``lines`` in all."""
    import asyncio

    import aiohttp

    say(f'(g) {num_clients} HTTP clients, one sentence per POST /v1/embeddings, {len(lines)} in all')
    url = f'http://127.0.0.1:{http_port}/v1/embeddings'

    async def client(session, mine: List[str]) -> None:
        for sentence in mine:
            async with session.post(url, json={'input': sentence}) as reply:
                body = await reply.json()
                if reply.status != 200:
                    raise RuntimeError(f'(g) HTTP {reply.status}: {body}')

    async def run() -> float:
        sessions = [aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_MS / 1000))
                    for _ in range(num_clients)]
        try:
            await asyncio.gather(*(client(s, lines[:2]) for s in sessions[:1]))  # warm-up
            t0 = time.perf_counter()
            await asyncio.gather(*(client(s, lines[i::num_clients]) for i, s in enumerate(sessions)))
            return time.perf_counter() - t0
        finally:
            for s in sessions:
                await s.close()

    return {'g_http_sentences_per_s': len(lines) / asyncio.run(run())}
