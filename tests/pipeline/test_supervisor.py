"""Supervisor: real child processes (child_role.py, a trivial role that starts in milliseconds) under
the restart policy. Processes start, die and are killed for real; the restart budget and the backoff
read a clock the test moves (the module's ``time`` is replaced, so no test waits out a backoff)."""
import logging
import os
from pathlib import Path

import pytest

from bert_serving.server.pipeline import supervisor as supervisor_module
from bert_serving.server.launcher import ChildProcess
from bert_serving.server.pipeline.supervisor import Supervisor

from ventilator_support import WAIT_SECONDS, Records

RUN = {}  # the child's spec: signal ready and run until SIGTERM
STUBBORN = {'ignore_sigterm': True}  # ... until SIGKILL


def exits(code: int) -> dict:
    return {'exit_code': code}


class Clock:
    """Monotonic seconds the test sets."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class Spawner:
    """``spawn_worker`` of the Supervisor: starts child_role with the spec ``plan(worker_id, generation)``.

    Attributes:
        started: identities in the order they started.
    """

    def __init__(self, plan):
        self.plan = plan
        self.started = []

    def __call__(self, worker_id: int, generation: int):
        proc = ChildProcess(f'WORKER-{worker_id}', 'child_role', self.plan(worker_id, generation))
        proc.start()
        identity = b'worker-%d-%d' % (worker_id, generation)
        self.started.append(identity)
        return identity, proc


LOGGER = logging.getLogger('test.supervisor')


@pytest.fixture
def records():
    """What the supervisors of this test logged (to LOGGER)."""
    handler = Records()
    LOGGER.setLevel(logging.DEBUG)
    LOGGER.addHandler(handler)
    yield handler
    LOGGER.removeHandler(handler)


@pytest.fixture
def supervise(monkeypatch, records):
    """``supervise(plan, **limits)`` -> Supervisor whose ``spawn_worker`` is a Spawner; every process is
    stopped after the test."""
    folder = str(Path(__file__).parent)  # where the children find child_role
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join([folder] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
    made = []

    def make(plan, **limits) -> Supervisor:
        sup = Supervisor(Spawner(plan), LOGGER, **limits)
        made.append(sup)
        return sup

    yield make
    for sup in made:
        sup.stop_all(WAIT_SECONDS)


@pytest.fixture
def clock(monkeypatch):
    made = Clock()
    monkeypatch.setattr(supervisor_module, 'time', made)
    return made


def test_a_dead_worker_is_reported_and_replaced_by_its_next_generation(supervise, records):
    sup = supervise(lambda worker_id, generation: exits(5) if generation == 0 else RUN)
    first = sup.start_worker(0)
    first.proc.join(WAIT_SECONDS)
    assert sup.dead_workers() == [(b'worker-0-0', 'died (exit code 5)')]

    sup.replace(b'worker-0-0', 'died (exit code 5)')
    (second,) = sup.workers.values()
    assert (second.identity, second.worker_id, second.generation, second.label) == (b'worker-0-1', 0, 1, '0')
    assert second.proc.wait_ready(WAIT_SECONDS)
    assert sup.processes == [second.proc] and sup.dead_workers() == []
    assert sup.label(b'worker-0-1') == '0' and sup.label(b'worker-0-0') is None
    assert 'WORKER-0 died (exit code 5); starting a new one' in records.messages(logging.ERROR)

    sup.replace(b'worker-0-0', 'reported twice')  # already replaced: nothing more starts
    assert sup.spawn_worker.started == [b'worker-0-0', b'worker-0-1']


def test_a_hung_worker_is_killed_before_its_replacement_starts(supervise):
    sup = supervise(lambda worker_id, generation: STUBBORN if generation == 0 else RUN)
    hung = sup.start_worker(0).proc
    assert hung.wait_ready(WAIT_SECONDS)
    sup.replace(b'worker-0-0', 'held a batch past -batch_timeout')
    assert not hung.is_alive() and hung.exitcode == -9  # SIGKILL: SIGTERM would be ignored
    assert list(sup.workers) == [b'worker-0-1'] and sup.workers[b'worker-0-1'].proc.is_alive()


def test_past_the_budget_replacements_back_off_doubling_up_to_a_minute(supervise, clock, records):
    """Two replacements within the window start at once; each one more waits 1, 2, 4 ... 60 s. A
    window without replacements restores the budget and the 1 s backoff."""
    sup = supervise(lambda worker_id, generation: exits(0), max_restarts=2, restart_window=60.0)
    sup.start_worker(3)

    def replace_current() -> None:
        (identity,) = sup.workers
        sup.replace(identity, 'died (exit code 0)')

    def generations() -> int:
        return len(sup.spawn_worker.started)

    for _ in range(2):
        replace_current()
    assert generations() == 3  # within the budget: at once

    for backoff in (1, 2, 4, 8, 16, 32, 60):  # 64 is capped
        replace_current()
        assert not sup.workers, 'past the budget a replacement must wait'
        assert f'WORKER-3 restarts in {backoff}s' in records.messages()[-1]
        clock.now += backoff - 0.01
        sup.restart_due()
        assert not sup.workers, f'started before its {backoff}s backoff'
        clock.now += 0.01
        sup.restart_due()
        assert list(sup.workers) == [b'worker-3-%d' % (generations() - 1)]

    clock.now += 61  # a quiet window
    for _ in range(2):
        replace_current()
    assert sup.workers, 'the budget came back after a quiet window'
    replace_current()
    assert not sup.workers and 'restarts in 1s' in records.messages()[-1]


def test_a_dead_sink_or_proxy_is_the_reason_to_stop(supervise):
    sup = supervise(lambda worker_id, generation: RUN)
    sink = ChildProcess('SINK', 'child_role', RUN)
    sink.start()
    sup.add_service(sink, 'see the SINK log')
    assert sink.wait_ready(WAIT_SECONDS) and sup.dead_service() is None
    proxy = ChildProcess('PROXY', 'child_role', exits(3))
    proxy.start()
    sup.add_service(proxy, 'is -http_port 8125 already in use?')
    proxy.join(WAIT_SECONDS)
    assert sup.dead_service() == 'the PROXY process died (exit code 3): is -http_port 8125 already in use?'
    assert sup.processes == [sink, proxy]


def test_stop_all_terminates_every_process_and_kills_the_stubborn(supervise, records):
    sup = supervise(lambda worker_id, generation: STUBBORN if worker_id == 1 else RUN)
    sink = ChildProcess('SINK', 'child_role', RUN)
    sink.start()
    sup.add_service(sink)
    obedient, stubborn = sup.start_worker(0).proc, sup.start_worker(1).proc
    assert all(p.wait_ready(WAIT_SECONDS) for p in (sink, obedient, stubborn))
    sup.stop_all(0.5)
    assert [p.exitcode for p in (sink, obedient, stubborn)] == [0, 0, -9]
    warnings = records.messages()
    assert len(warnings) == 1 and warnings[0].startswith('WORKER-1 did not stop')
