"""A 250,000-input call, as the original's FAQ tells users to make, through the fake engine slowed to
a real model's pace: accepted although it is bigger than the queue, streamed through it, never
timed out while it makes progress, answered in order, with the server's memory bounded. A request
of another client, refused as busy while the call fills the queue, gets in as the call's computed
pieces free room, and is answered long before the call ends (the queue takes turns).

Time is scaled down: BERT-base on a CPU takes about 25 ms per input (MiniLM-L6 runs ~380 inputs/s
here, docs/benchmark-history.md; BERT-base has about ten times its compute), so this call would take ~50
minutes on two workers against a 300 s -request_timeout. Here an input takes 1/400 of that and
-request_timeout is 3 s: the call still runs several timeouts long.
"""
import threading
import time
from pathlib import Path

import numpy as np

from bert_serving.client import BertServerBusyError

from service_support import FAKE, sentence, wait_until

ROWS = 250_000
ROW_SECONDS = 25e-3 / 400
REQUEST_TIMEOUT = 3.0
MAX_QUEUE_BYTES = 4 << 20  # the payload is ~12 MiB: bigger than the queue in bytes too
CLIENT_TIMEOUT_MS = 600_000  # a bound on a hang, not a timing


def _rss(pid='self') -> int:
    """Resident bytes of a process (0 once it is gone)."""
    try:
        for line in Path(f'/proc/{pid}/status').read_text().splitlines():
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class _PeakRss(threading.Thread):
    """Samples the resident memory of some processes every 50 ms; keeps the highest of each."""

    def __init__(self, pids: dict):
        super().__init__(daemon=True)
        self.pids = pids
        self.peak = {name: _rss(pid) for name, pid in pids.items()}
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(0.05):
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], _rss(pid))


def test_a_250k_input_call_bigger_than_the_queue_streams_through_without_timing_out(launch, fake_vectors):
    texts = [sentence(i) for i in range(ROWS)]
    flags = ['-num_worker', '2', '-fake_row_seconds', repr(ROW_SECONDS), '-request_timeout', repr(REQUEST_TIMEOUT),
             '-max_queue_bytes', str(MAX_QUEUE_BYTES)]
    with launch(FAKE, flags) as running:
        scheduler = running.server.scheduler
        assert len(texts) > scheduler.cfg.max_queue_rows  # the default 200,000
        [sink] = [p for p in running.server.processes if p.name == 'SINK']
        # The ventilator is a thread of this process: its figure includes pytest and the client.
        before = {'ventilator+client': _rss(), 'sink': _rss(sink.pid)}
        sampler = _PeakRss({'ventilator+client': 'self', 'sink': sink.pid})
        sampler.start()
        started = time.monotonic()
        try:
            with running.client(timeout=CLIENT_TIMEOUT_MS) as client, running.client() as other:
                client.encode(texts, blocking=False)
                # In first, so that the other finds the queue full.
                assert wait_until(lambda: scheduler.open_rows > 0, 60, 0.02)
                medium = [sentence(ROWS + i) for i in range(100)]  # past -priority_batch_size: the normal queue
                busy = 0
                while True:
                    try:
                        got = other.encode(medium)
                        break
                    except BertServerBusyError:
                        busy += 1
                        time.sleep(0.2)
                left_then = scheduler.open_rows  # the call's inputs not computed yet
                [vectors] = client.fetch_all()
        finally:
            sampler.stop.set()
            sampler.join()
        seconds = time.monotonic() - started
        # The ventilator learns of the last pieces just after the client got its reply.
        emptied = wait_until(lambda: scheduler.open_rows == 0 and not scheduler.requests, 30, 0.02)
    assert vectors.shape == (ROWS, fake_vectors.one(texts[0]).shape[0])
    step = 997  # every 997th row, spread over the whole request and every piece's position
    np.testing.assert_allclose(vectors[::step], fake_vectors.many(texts[::step]), atol=1e-6)
    np.testing.assert_allclose(vectors[-1], fake_vectors.one(texts[-1]), atol=1e-6)
    assert emptied, (scheduler.open_rows, scheduler.open_bytes)
    np.testing.assert_allclose(got, fake_vectors.many(medium), atol=1e-6)
    assert busy > 0 and left_then > ROWS // 10, (busy, left_then)
    payload = sum(len(t) for t in texts)
    growth = {name: sampler.peak[name] - before[name] for name in before}
    print(f'\n{ROWS} inputs ({payload / 2**20:.1f} MiB of text, reply {vectors.nbytes / 2**20:.1f} MiB) in '
          f'{seconds:.1f} s with 2 workers at {ROW_SECONDS * 1e6:.1f} us per input '
          f'({ROWS * ROW_SECONDS / 2:.1f} s of model time each), -request_timeout {REQUEST_TIMEOUT:g} s; '
          + '; '.join(f'{name} RSS {before[name] / 2**20:.0f} MiB before, peak {sampler.peak[name] / 2**20:.0f} MiB '
                      f'(+{growth[name] / 2**20:.0f} MiB)' for name in before)
          + f'; another client\'s 100 inputs: busy {busy} times, then answered with {left_then} of the call\'s '
            'inputs still to compute')
    # Bounded: the sink holds the reply being put together (its pieces, then the array, then the
    # message), not one copy per piece; the ventilator the request's texts once.
    assert growth['sink'] < 64 * 2**20 + 4 * vectors.nbytes
    assert growth['ventilator+client'] < 256 * 2**20  # the texts, the payload and the reply, a few times
