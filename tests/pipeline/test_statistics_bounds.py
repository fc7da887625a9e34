"""ServerStatistic: the 1.10 ``statistic`` keys, in memory bounded by the client cap whatever the history."""
import pytest

from bert_serving.server.pipeline import statistics
from bert_serving.server.pipeline.statistics import ACTIVE_SECONDS, INTERVALS, MAX_CLIENTS, ServerStatistic

KEYS_1_10 = {'num_data_request', 'num_total_seq', 'num_sys_request', 'num_total_request', 'num_total_client',
             'num_active_client'} | {f'{stat}_{name}' for name in ('request_per_client', 'size_per_request',
                                                                     'last_two_interval', 'request_per_second')
                                     for stat in ('avg', 'min', 'max', 'num_min', 'num_max')}


class FakeClock:
    """Stands in for time.perf_counter: one second passes per reading unless told otherwise."""

    def __init__(self):
        self.now = 1000.0
        self.step = 1.0

    def __call__(self):
        self.now += self.step
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(statistics.time, 'perf_counter', fake)
    return fake


def _sized_containers(stat: ServerStatistic) -> dict:
    """Every container the statistic holds, with its length."""
    found = {}
    for owner, fields in (('stat', vars(stat)), ('sizes', vars(stat.sizes))):
        for name, value in fields.items():
            if hasattr(value, '__len__') and not isinstance(value, (str, bytes)):
                found[f'{owner}.{name}'] = len(value)
    return found


def test_the_1_10_keys_after_known_traffic(clock):
    stat = ServerStatistic()
    for client, size in ((b'a', 3), (b'b', 1), (b'a', 5)):
        stat.update(client, size, is_command=False)
    stat.update(b'b', 0, is_command=True)
    value = stat.value
    assert set(value) == KEYS_1_10
    assert (value['num_data_request'], value['num_sys_request'], value['num_total_request']) == (3, 1, 4)
    assert (value['num_total_seq'], value['num_total_client'], value['num_active_client']) == (9, 2, 2)
    assert (value['min_size_per_request'], value['max_size_per_request']) == (1, 5)
    assert value['avg_size_per_request'] == pytest.approx(3.0)
    assert value['avg_request_per_client'] == 2 and value['num_max_request_per_client'] == 2
    assert value['min_last_two_interval'] == value['max_last_two_interval'] == 1.0  # one clock step apart
    assert value['avg_request_per_second'] == 1.0


def test_fifty_thousand_clients_keep_only_the_cap(clock):
    stat = ServerStatistic()
    heavy = b'heavy-client'
    for i in range(50000):
        stat.update(b'client-%05d' % i, 1 + i % 7, is_command=False)
        if i % 1000 == 0:
            stat.update(heavy, 2, is_command=False)  # seen often enough never to be the oldest
    assert len(stat.clients) == MAX_CLIENTS
    assert max(_sized_containers(stat).values()) <= max(MAX_CLIENTS, INTERVALS)
    assert b'client-00000' not in stat.clients and b'client-49999' in stat.clients and heavy in stat.clients

    value = stat.value
    assert value['num_total_client'] == 50001 and value['num_data_request'] == 50050
    # Per-client figures cover the retained window: the heavy client and the 9,999 latest others.
    assert value['max_request_per_client'] == 50 and value['num_max_request_per_client'] == 1
    assert value['min_request_per_client'] == 1 and value['num_min_request_per_client'] == MAX_CLIENTS - 1
    assert value['avg_request_per_client'] == pytest.approx((50 + MAX_CLIENTS - 1) / MAX_CLIENTS)
    # Request sizes cover the whole history, exactly.
    sizes = [1 + i % 7 for i in range(50000)] + [2] * 50
    assert value['num_total_seq'] == sum(sizes)
    assert value['avg_size_per_request'] == pytest.approx(sum(sizes) / len(sizes))
    assert (value['min_size_per_request'], value['num_min_size_per_request']) == (1, sizes.count(1))
    assert (value['max_size_per_request'], value['num_max_size_per_request']) == (7, sizes.count(7))


def test_a_forgotten_client_that_comes_back_starts_again(clock):
    stat = ServerStatistic(max_clients=3)
    for client in (b'a', b'a', b'b', b'c', b'd'):  # d pushes out a, the least recently seen
        stat.update(client, 1, is_command=False)
    assert list(stat.clients) == [b'b', b'c', b'd']
    stat.update(b'b', 0, is_command=True)  # a command counts as being seen: c is now the oldest
    stat.update(b'a', 1, is_command=False)
    assert list(stat.clients) == [b'd', b'b', b'a']
    assert stat.clients[b'a'].requests == 1 and stat.clients[b'b'].requests == 2
    assert stat.value['num_total_client'] == 5  # a, b, c, d, and a again


def test_only_clients_that_sent_data_recently_are_active(clock):
    stat = ServerStatistic()
    stat.update(b'old', 1, is_command=False)
    stat.update(b'commands-only', 0, is_command=True)
    clock.now += ACTIVE_SECONDS
    stat.update(b'recent', 1, is_command=False)
    value = stat.value
    assert value['num_total_client'] == 3 and value['num_active_client'] == 1


def test_intervals_keep_only_the_latest(clock):
    stat = ServerStatistic()
    clock.step = 10.0
    for _ in range(INTERVALS + 1):  # the first request starts the first interval
        stat.update(b'a', 1, is_command=False)
    clock.step = 2.0
    for _ in range(INTERVALS):
        stat.update(b'a', 1, is_command=False)
    value = stat.value
    assert len(stat.intervals) == INTERVALS
    # perf_counter is read once per data request and once per value: intervals are one step each.
    assert value['max_last_two_interval'] == value['min_last_two_interval'] == 2.0
    assert value['avg_request_per_second'] == pytest.approx(0.5)


def test_no_traffic_gives_the_counts_only():
    value = ServerStatistic().value
    assert value == {'num_data_request': 0, 'num_total_seq': 0, 'num_sys_request': 0, 'num_total_request': 0,
                     'num_total_client': 0, 'num_active_client': 0}


def test_lost_workers_count_by_a_fixed_set_of_reasons_from_the_real_wording():
    """The reasons come as the supervisor, the scheduler and the ventilator word them; the metrics
    label each with one of a few values, never the free text (a Prometheus label)."""
    from bert_serving.server.pipeline.request_queue import SchedulerConfig
    from bert_serving.server.pipeline.scheduler import Scheduler

    now = [0.0]
    scheduler = Scheduler(SchedulerConfig(num_worker=2, batch_timeout=5, heartbeat_timeout=10), clock=lambda: now[0])
    scheduler.add_worker(b'hangs', 1, '0')
    scheduler.accept(b'c', 1, ['a'], False)
    scheduler.take_batches()
    now[0] = 6.0
    scheduler.seen(b'hangs')
    scheduler.add_worker(b'silent', 1, '1')
    now[0] = 17.0
    scheduler.seen(b'hangs')
    whys = dict(scheduler.overdue())
    stat = ServerStatistic()
    for why in (whys[b'hangs'], whys[b'silent'], 'died (exit code -9)', 'registered again', 'could not start',
                'said its results were sent, but the sink did not get them for 31s', 'something new'):
        stat.lost_worker(why)
    assert stat.lost_workers == {'hung': 1, 'silent': 1, 'died': 1, 'registered_again': 1, 'could_not_start': 1,
                                 'results_lost': 1, 'other': 1}
    assert set(stat.lost_workers) <= set(statistics.LOSS_REASONS)
