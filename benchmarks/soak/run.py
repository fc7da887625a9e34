"""Orchestration of one soak: start the servers, run traffic and chaos, judge, clean up.

Exit status: 0 when nothing was lost, nothing was wrong and nothing hung; 1 otherwise; 2 when the
servers could not start; 3 when the harness itself passed its hard deadline (it then kills what it
started and writes what it has).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional

from .chaos import ACTIONS, Chaos
from .compat110 import Compat110Loop
from .ledger import Ledger, format_summary
from .oracle import Oracle, make_pool
from .server import MAX_SEQ_LEN, RELIABILITY_FLAGS, SERVER_FLAGS, ServerProcess, supported_flags
from .traffic import Traffic, async_loop, big_bound_s, big_loop, concurrent_loop, http_loop, none_loop, zmq_loop

__all__ = ['main', 'parse_args']

RESULTS_DIR = Path(__file__).resolve().parents[1] / 'results'
SETUP_BUDGET_S = 600.0  # oracle, graph build, two servers loading, on a busy 2-core machine
SHUTDOWN_EXTRA_S = 15.0  # the bound after the drain timeout
ROLES_THAT_MUST_STAY_FLAT = ('ventilator', 'sink', 'proxy')


def _port_list(text: str) -> List[int]:
    ports = [int(p) for p in text.split(',') if p.strip()]
    if len(ports) < 5:
        raise argparse.ArgumentTypeError(f'5 ports are needed (main: port, port_out, http; none: port, port_out), '
                                         f'got {len(ports)}')
    return ports


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog='python -m benchmarks.soak', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--seconds', type=float, default=float(os.environ.get('SOAK_SECONDS') or 600),
                   help='traffic duration (default $SOAK_SECONDS, else 600)')
    p.add_argument('--client-timeout', type=float, default=45.0,
                   help="every client's timeout and each request's bound, in s; keep it above the server's "
                        '-request_timeout so that a server keeping its promise answers first')
    p.add_argument('--slack', type=float, default=15.0,
                   help='extra seconds before a call that has not returned at all is called hung')
    p.add_argument('--warmup', type=float, default=None,
                   help='seconds without chaos before the RSS baseline (default: 15%% of --seconds, at most 60)')
    p.add_argument('--chaos', default=','.join(ACTIONS),
                   help=f"comma-separated actions among {','.join(ACTIONS)}, or 'none'")
    p.add_argument('--rss-limit-mb', type=float, default=None,
                   help='fail when the ventilator, sink or proxy grows more than this after warm-up '
                        '(default: 20 for runs of 10 minutes or more, else report only)')
    p.add_argument('--no-none-pooling', action='store_true', help='skip the second server (-pooling_strategy NONE)')
    p.add_argument('--no-compat110', action='store_true', help='skip the PyPI 1.10.0 client subprocess')
    p.add_argument('--max-queue-rows', type=int, default=int(dict(RELIABILITY_FLAGS)['-max_queue_rows']),
                   help="the servers' -max_queue_rows, which the flood overflows (default %(default)s); a "
                        'smaller bound makes a smaller flood, for a short run on a small machine')
    p.add_argument('--ports', type=_port_list, default=None, metavar='P,P,...',
                   help='the servers\' ports, in order: main -port, -port_out, -http_port, then none -port, '
                        '-port_out (default: free ports the kernel picks)')
    p.add_argument('--zmq-threads', type=int, default=3, help='threads with their own BertClient')
    p.add_argument('--output', type=Path, default=None,
                   help='JSON summary (default benchmarks/results/soak-<UTC time>.json)')
    args = p.parse_args(argv)
    args.actions = {} if args.chaos.strip() == 'none' else {a: ACTIONS[a] for a in args.chaos.split(',') if a}
    if args.warmup is None:
        args.warmup = min(60.0, 0.15 * args.seconds)
    if args.rss_limit_mb is None and args.seconds >= 600:
        args.rss_limit_mb = 20.0
    return args


def say(message: str) -> None:
    sys.stderr.write(f'[soak {time.strftime("%H:%M:%S")}] {message}\n')
    sys.stderr.flush()


class Soak:
    """One run; ``servers`` and ``compat`` are kept so that any exit path can stop them."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix='bert-soak-'))
        self.ledger = Ledger()
        self.servers: Dict[str, ServerProcess] = {}
        self.skipped: List[str] = []
        self.compat: Optional[Compat110Loop] = None
        self.chaos: Optional[Chaos] = None
        self.rss: Dict[str, Dict[str, Dict[str, Optional[float]]]] = {}
        self.problems: List[str] = []
        self.shutdown: Dict[str, dict] = {}
        self.started_at = datetime.now(timezone.utc)
        self.traffic_seconds = 0.0

    # -- setup --------------------------------------------------------------------------------
    def start_servers(self) -> Dict[str, Oracle]:
        reliability = [(f, str(self.args.max_queue_rows) if f == '-max_queue_rows' else v)
                       for f, v in RELIABILITY_FLAGS]
        flags, self.skipped = supported_flags(SERVER_FLAGS + reliability)
        if self.skipped:
            say(f"this server has no {' '.join(self.skipped)}: running without them")
        self.drain_s = float(dict(flags).get('-drain_timeout') or 5.0)
        ports = iter(self.args.ports) if self.args.ports else None
        self.servers['main'] = ServerProcess('main', flags, http=True, log_path=self.workdir / 'server-main.log',
                                             ports=ports)
        if not self.args.no_none_pooling:
            none_flags = [(f, v) for f, v in flags if f != '-num_worker'] + [('-num_worker', '1'),
                                                                           ('-pooling_strategy', 'NONE')]
            self.servers['none'] = ServerProcess('none', none_flags, http=False,
                                                 log_path=self.workdir / 'server-none.log', ports=ports)
        pool = make_pool()
        say(f'computing the oracle for {len(pool)} sentences in this process (max_seq_len {MAX_SEQ_LEN})')
        oracles = {'main': Oracle.compute(pool, MAX_SEQ_LEN)}
        if 'none' in self.servers:
            oracles['none'] = Oracle.compute(pool, MAX_SEQ_LEN, 'NONE')
        for server in self.servers.values():
            say(f"starting: {' '.join(server.argv())}")
            server.start()
        for server in self.servers.values():
            server.wait_ready()
            say(f'server {server.name} ready: pid {server.pid}, tree {server.processes()}')
        return oracles

    def snapshot(self, label: str) -> None:
        for name, server in self.servers.items():
            procs = server.processes()
            for key, mb in server.rss().items():
                role = key.split(':')[0]
                name_key = role if role in ROLES_THAT_MUST_STAY_FLAT and list(procs.values()).count(role) == 1 else key
                self.rss.setdefault(name, {}).setdefault(name_key, {'start': None, 'warm': None, 'end': None})[label] = mb

    # -- the run ------------------------------------------------------------------------------
    def run(self, oracles: Dict[str, Oracle]) -> None:
        args, main = self.args, self.servers['main']
        stop = threading.Event()
        t = Traffic(self.ledger, oracles['main'], main.port, main.port_out, main.http_port, args.client_timeout,
                    stop, time.monotonic() + args.seconds)
        if 'none' in self.servers:
            t.none_oracle, t.none_port, t.none_port_out = oracles['none'], self.servers['none'].port, \
                self.servers['none'].port_out
        from bert_serving.client import ConcurrentBertClient
        pool = ConcurrentBertClient(max_concurrency=2, port=main.port, port_out=main.port_out,
                                    timeout=int(args.client_timeout * 1000), check_length=False)
        loops = [(zmq_loop, (t, 100 + i)) for i in range(args.zmq_threads)]
        loops += [(concurrent_loop, (t, pool, 200 + i)) for i in range(2)]
        loops += [(async_loop, (t, 300)), (big_loop, (t, 400)),
                  (http_loop, (t, '/encode', 500)), (http_loop, (t, '/v1/embeddings', 600))]
        if t.none_oracle is not None:
            loops.append((none_loop, (t, 700)))
        threads = [threading.Thread(target=fn, args=a, name=fn.__name__, daemon=True) for fn, a in loops]
        if not args.no_compat110:
            if Compat110Loop.available():
                self.compat = Compat110Loop(self.ledger, oracles['main'], main.port, main.port_out,
                                            self.workdir / 'compat110', args.seconds, args.client_timeout)
                self.compat.start()
            else:
                self.problems.append('bert-serving-client 1.10.0 missing from .venv/compat110 (make install)')
        self.chaos = Chaos(t, main, args.actions, stop_seconds=self._stop_seconds(),
                           flood_rows=args.max_queue_rows)
        threads.append(threading.Thread(target=self.chaos.run, args=(args.warmup,), name='chaos', daemon=True))
        began = time.monotonic()
        for thread in threads:
            thread.start()
        warm_taken = False
        while time.monotonic() - began < args.seconds:
            time.sleep(1.0)
            self.ledger.sweep(args.slack)
            if not warm_taken and time.monotonic() - began >= args.warmup:
                self.snapshot('warm')
                warm_taken = True
            for name, server in self.servers.items():
                if not server.alive():
                    self.problems.append(f'server {name} exited with {server.popen.returncode} during the soak')
                    stop.set()
            if stop.is_set():
                break
        self.traffic_seconds = time.monotonic() - began
        say(f'traffic stops after {self.traffic_seconds:.0f}s; waiting for the requests in flight')
        stop.set()
        finish_by = time.monotonic() + big_bound_s(args.client_timeout) + args.slack + 5  # the largest bound
        self.chaos.release()
        if self.compat:
            self.compat.stop(grace=max(1.0, finish_by - time.monotonic()))
        for thread in threads:
            thread.join(timeout=max(0.0, finish_by - time.monotonic()))
        stuck = [thread.name for thread in threads if thread.is_alive()]
        if stuck:
            self.problems.append(f"client threads still blocked after their bound: {', '.join(stuck)}")
        self.ledger.sweep(args.slack)
        self.ledger.sweep(-1e9)  # whatever is still open now has no chance left
        pool.close()
        self.snapshot('end')

    def _stop_seconds(self) -> float:
        heartbeat = dict(RELIABILITY_FLAGS).get('-heartbeat_timeout')
        return float(heartbeat) + 5.0 if heartbeat else 15.0

    def stop_servers(self) -> None:
        for name, server in self.servers.items():
            info = server.stop(grace=self.drain_s + SHUTDOWN_EXTRA_S)
            self.shutdown[name] = info
            if info.get('killed_after_grace'):
                self.problems.append(f"server {name} did not stop within {self.drain_s + SHUTDOWN_EXTRA_S:.0f}s "
                                     f"of SIGTERM; killed {', '.join(info['killed_after_grace'])}")

    # -- the verdict --------------------------------------------------------------------------
    def result(self) -> dict:
        summary = self.ledger.summary()
        problems = list(self.problems)
        if summary['lost']:
            problems.insert(0, f"{summary['lost']} lost")
        if summary['wrong']:
            problems.insert(0, f"{summary['wrong']} wrong")
        servers = {}
        for name, server in self.servers.items():
            rss = self.rss.get(name, {})
            for proc, m in rss.items():
                m['growth_after_warm'] = None if m['warm'] is None or m['end'] is None else round(m['end'] - m['warm'], 1)
                limit = self.args.rss_limit_mb
                if limit and proc in ROLES_THAT_MUST_STAY_FLAT and (m['growth_after_warm'] or 0) > limit:
                    problems.append(f"{name} {proc} grew {m['growth_after_warm']:.0f} MiB after warm-up (limit {limit:.0f})")
            servers[name] = {'flags': [f if v is None else f'{f} {v}' for f, v in server.flags],
                             'skipped_flags': self.skipped, 'rss': rss, 'shutdown': self.shutdown.get(name, {}),
                             'log': str(server.log_path)}
        return {
            'verdict': 'FAIL' if problems else 'PASS', 'problems': problems,
            'date': self.started_at.isoformat(timespec='seconds'), 'machine': _machine(),
            'command': ' '.join(sys.argv), 'seconds': self.traffic_seconds, 'requested_seconds': self.args.seconds,
            'client_timeout_s': self.args.client_timeout, 'slack_s': self.args.slack, 'warmup_s': self.args.warmup,
            'chaos_actions': sorted(self.args.actions), 'rss_limit_mb': self.args.rss_limit_mb,
            'requests': summary, 'servers': servers, 'workdir': str(self.workdir),
        }

    def emergency_stop(self) -> None:
        """Called by the hard deadline: stop everything this run started, by pid."""
        if self.chaos:
            self.chaos.release()
        if self.compat and self.compat.popen and self.compat.popen.poll() is None:
            self.compat.popen.kill()
        for server in self.servers.values():
            server.stop(grace=1.0)


def _machine() -> str:
    cpu = next((line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo') if line.startswith('model name')), '?')
    return f'{platform.node()}: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}'


def write(result: dict, output: Optional[Path]) -> Path:
    output = output or RESULTS_DIR / f"soak-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1))
    return output


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    soak = Soak(args)
    hard_deadline = SETUP_BUDGET_S + args.seconds + 2 * (big_bound_s(args.client_timeout) + args.slack) + 120.0

    def watchdog() -> None:
        time.sleep(hard_deadline)
        say(f'HARD DEADLINE: the soak did not finish within {hard_deadline:.0f}s; stopping everything')
        soak.problems.append(f'the harness passed its hard deadline of {hard_deadline:.0f}s')
        soak.emergency_stop()
        result = soak.result()
        print(format_summary(result), flush=True)
        say(f'summary written to {write(result, args.output)}')
        os._exit(3)

    threading.Thread(target=watchdog, name='hard-deadline', daemon=True).start()
    try:
        try:
            oracles = soak.start_servers()
        except Exception as e:  # noqa: BLE001 - report and clean up whatever did start
            say(f'setup failed: {type(e).__name__}: {e}')
            soak.emergency_stop()
            return 2
        soak.snapshot('start')
        soak.run(oracles)
    finally:
        if soak.chaos:
            soak.chaos.release()
        soak.stop_servers()
    result = soak.result()
    print(format_summary(result), flush=True)
    say(f'summary written to {write(result, args.output)}; server logs in {soak.workdir}')
    return 0 if result['verdict'] == 'PASS' else 1
