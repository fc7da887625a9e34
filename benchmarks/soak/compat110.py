"""Traffic from the unmodified PyPI bert-serving-client 1.10.0, in a subprocess of its own.

1.10.0 has our client's import name, so it runs under a PYTHONPATH of only ``.venv/compat110``.
The subprocess loads the pool and the oracle's vectors from files, checks each reply itself, and
prints one JSON line when it sends a request and one when the request ends; this process turns
those lines into ledger records, so a request the subprocess never finishes is caught as lost.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from .ledger import Ledger, Record
from .oracle import ATOL, Oracle

__all__ = ['Compat110Loop', 'COMPAT110']

COMPAT110 = Path(__file__).resolve().parents[2] / '.venv' / 'compat110'

SCRIPT = textwrap.dedent('''
    import json, os, random, sys, time
    import numpy as np
    from bert_serving.client import BertClient

    port, port_out, job, seconds, timeout_ms, seed, atol = sys.argv[1:8]
    texts = json.load(open(os.path.join(job, 'pool.json')))
    vectors = np.load(os.path.join(job, 'vectors.npy'))
    rng = random.Random(int(seed))
    deadline = time.monotonic() + float(seconds)
    stop_file = os.path.join(job, 'stop')

    def say(**fields):
        print(json.dumps(fields), flush=True)

    bc, n = None, 0
    while time.monotonic() < deadline and n < 100000 and not os.path.exists(stop_file):
        if bc is None:
            try:
                bc = BertClient(port=int(port), port_out=int(port_out), timeout=int(timeout_ms), check_length=False)
            except Exception as e:
                say(event='connect_failed', reason='%s: %s' % (type(e).__name__, e))
                time.sleep(1)
                continue
        idx = [rng.randrange(len(texts)) for _ in range(rng.choice([1, 1, 3, 8, 32]))]
        n += 1
        say(event='send', n=n, rows=len(idx))
        try:
            got = np.asarray(bc.encode([texts[i] for i in idx]), dtype=np.float32)
        except Exception as e:
            say(event='end', n=n, outcome='timeout' if isinstance(e, TimeoutError) else 'error',
                reason='%s: %s' % (type(e).__name__, e))
            bc.close()  # 1.10 keeps no order after an error: start afresh
            bc = None
            continue
        want = vectors[idx]
        if got.shape != want.shape:
            say(event='end', n=n, outcome='wrong', reason='shape %s, expected %s' % (got.shape, want.shape))
        elif not np.all(np.abs(got - want) <= float(atol)):
            say(event='end', n=n, outcome='wrong', reason='max abs error %.3g' % np.abs(got - want).max())
        else:
            say(event='end', n=n, outcome='ok')
        time.sleep(rng.uniform(0.05, 0.4))
    if bc is not None:
        bc.close()
''')


class Compat110Loop:
    """Runs SCRIPT in a subprocess and reads its lines into the ledger.

    Args:
        ledger, oracle: where the records go, and the expected vectors.
        port, port_out: the server's ports.
        workdir: a folder for the job files.
        seconds: how long the subprocess sends; timeout_s: its client timeout, each request's bound.
    """

    def __init__(self, ledger: Ledger, oracle: Oracle, port: int, port_out: int, workdir: Path,
                 seconds: float, timeout_s: float, seed: int = 110):
        self.ledger, self.timeout_s, self.workdir = ledger, timeout_s, workdir
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / 'pool.json').write_text(json.dumps(oracle.texts))
        np.save(workdir / 'vectors.npy', oracle.vectors)
        (workdir / 'run.py').write_text(SCRIPT)
        self.argv = [sys.executable, str(workdir / 'run.py'), str(port), str(port_out), str(workdir),
                     str(seconds), str(int(timeout_s * 1000)), str(seed), str(ATOL)]
        self.popen: Optional[subprocess.Popen] = None
        self.reader: Optional[threading.Thread] = None
        self.open: Dict[int, Record] = {}
        self.stderr_path = workdir / 'stderr.txt'

    @staticmethod
    def available() -> bool:
        return (COMPAT110 / 'bert_serving' / 'client' / '__init__.py').is_file()

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
        env['PYTHONPATH'] = str(COMPAT110)
        with open(self.stderr_path, 'wb') as err:
            self.popen = subprocess.Popen(self.argv, env=env, cwd=str(self.workdir), stdout=subprocess.PIPE,
                                          stderr=err, stdin=subprocess.DEVNULL, text=True)
        self.reader = threading.Thread(target=self._read, name='compat110-reader', daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get('event') == 'send':
                self.open[msg['n']] = self.ledger.begin('compat110', msg['rows'], self.timeout_s)
            elif msg.get('event') == 'end' and msg['n'] in self.open:
                record, outcome = self.open.pop(msg['n']), msg['outcome']
                if outcome == 'ok':
                    self.ledger.correct(record)
                elif outcome == 'wrong':
                    self.ledger.wrong(record, msg['reason'])
                elif outcome == 'timeout':
                    self.ledger.lost(record, f'client timeout: no reply within {self.timeout_s:.0f}s')
                else:
                    self.ledger.failed(record, msg['reason'])
            elif msg.get('event') == 'connect_failed':
                self.ledger.event('client_connect_failed', 'compat110')

    def stop(self, grace: float) -> Optional[int]:
        """Asks the loop to finish its request and exit; kills it after ``grace`` seconds."""
        if self.popen is None:
            return None
        (self.workdir / 'stop').touch()
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=10)
        if self.reader:
            self.reader.join(timeout=5)
        return self.popen.returncode
