"""WorkerRegistry: who may join (HELLO on the right socket with the server's fingerprint), who counts
as ready (one READY after HELLO, credit capped), and what is forgotten when a worker is lost. No sockets."""
import pytest

from bert_serving.server.pipeline import messages as msg
from bert_serving.server.pipeline.registry import MAX_CREDIT, WorkerRegistry

FINGERPRINT = 'f' * 64
LOCAL = {b'worker-0-0': '0', b'worker-1-3': '1'}  # what the supervisor started: identity -> label


def hello(host='h', pid=7, fingerprint=FINGERPRINT, protocol=msg.PROTOCOL_VERSION):
    return {'fingerprint': fingerprint, 'host': host, 'pid': pid, 'device': 'cpu', 'local': False, 'protocol': protocol}


@pytest.fixture
def registry():
    return WorkerRegistry(FINGERPRINT, LOCAL.get, remote_enabled=True)


def test_a_local_worker_joins_under_its_supervisor_label_and_loads(registry):
    assert registry.hello(b'worker-1-3', hello(), remote=False) is None
    info = registry.get(b'worker-1-3', remote=False)
    assert (info.name, info.label, info.state, info.remote, info.channel) == ('WORKER-1', '1', 'loading', False,
                                                                              b'local')


def test_a_remote_worker_is_named_after_its_host_and_pid_and_keeps_its_channel(registry):
    assert registry.hello(b'remote-x', hello(host='gpu-box', pid=42), remote=True, channel=b'remote:KEY') is None
    info = registry.get(b'remote-x', remote=True)
    assert (info.name, info.label, info.host, info.channel) == ('REMOTE-gpu-box-42', 'REMOTE-gpu-box-42', 'gpu-box',
                                                                b'remote:KEY')


@pytest.mark.parametrize('identity, remote, reason', [
    (b'stranger', False, 'unknown local worker'),  # on the ipc socket, only what the supervisor started
    (b'worker-0-0', True, 'belongs to a local worker'),  # a TCP peer posing as a local worker
])
def test_a_worker_on_the_wrong_socket_is_refused_and_not_known(registry, identity, remote, reason):
    assert reason in registry.hello(identity, hello(), remote=remote)
    assert registry.known == {}


def test_another_fingerprint_is_refused_with_both_and_what_to_change(registry):
    reason = registry.hello(b'worker-0-0', hello(fingerprint='a' * 64), remote=False)
    assert 'a' * 12 in reason and 'f' * 12 in reason and '-model_dir' in reason
    assert registry.get(b'worker-0-0', remote=False) is None


@pytest.mark.parametrize('protocol', [None, 1, msg.PROTOCOL_VERSION + 1])
def test_a_worker_of_another_release_is_refused_with_what_to_install(registry, protocol):
    """A remote worker of a release whose messages this server would drop (an older one sends no
    "protocol" in its HELLO) is told so, instead of being welcomed and losing every result."""
    reason = registry.hello(b'remote-x', hello(protocol=protocol), remote=True, channel=b'remote:KEY')
    assert f'internal protocol {protocol or 1} and this server {msg.PROTOCOL_VERSION}' in reason
    assert 'same bert-serving-server release' in reason
    assert registry.get(b'remote-x', remote=True) is None


def test_hello_carries_the_protocol_version():
    frames = [b'remote-x'] + msg.pack_hello('f' * 64, 'h', 1, 'cpu', False)
    assert msg.unpack_worker(frames).info['protocol'] == msg.PROTOCOL_VERSION
    old = [b'remote-x', msg.HELLO, b'{"fingerprint": "ff", "host": "h", "pid": 1, "device": "cpu", "local": false}']
    assert msg.unpack_worker(old).info['protocol'] is None


def test_remote_workers_need_port_worker():
    registry = WorkerRegistry(FINGERPRINT, LOCAL.get, remote_enabled=False)
    assert '-port_worker' in registry.hello(b'remote-x', hello(), remote=True)
    assert registry.hello(b'worker-0-0', hello(), remote=False) is None  # local ones still join


def test_a_worker_is_found_only_on_the_socket_it_registered_on(registry):
    registry.hello(b'remote-x', hello(), remote=True)
    assert registry.get(b'remote-x', remote=False) is None
    assert registry.get(b'remote-x', remote=True) is not None


@pytest.mark.parametrize('claimed, granted', [(1, 1), (2, 2), (50, MAX_CREDIT), (0, 1), (-3, 1)])
def test_ready_grants_the_claimed_credit_within_bounds(registry, claimed, granted):
    registry.hello(b'worker-0-0', hello(), remote=False)
    assert registry.ready(b'worker-0-0', claimed) == granted
    assert registry.get(b'worker-0-0', remote=False).state == 'ready'


def test_ready_counts_once_and_only_after_hello(registry):
    assert registry.ready(b'worker-0-0', 2) is None  # no HELLO yet
    registry.hello(b'worker-0-0', hello(), remote=False)
    assert registry.ready(b'worker-0-0', 2) == 2
    assert registry.ready(b'worker-0-0', 2) is None  # a second READY grants no more credit


def test_only_ready_local_workers_count_towards_the_server_being_ready(registry):
    registry.hello(b'worker-0-0', hello(), remote=False)
    registry.hello(b'worker-1-3', hello(), remote=False)
    registry.hello(b'remote-x', hello(), remote=True)
    registry.ready(b'remote-x', 1)
    assert registry.num_local_ready() == 0
    registry.ready(b'worker-1-3', 1)
    assert registry.num_local_ready() == 1


def test_a_lost_worker_is_forgotten_and_must_say_hello_again(registry):
    registry.hello(b'worker-0-0', hello(), remote=False)
    registry.ready(b'worker-0-0', 2)
    assert registry.forget(b'worker-0-0').name == 'WORKER-0'
    assert registry.get(b'worker-0-0', remote=False) is None
    assert registry.forget(b'worker-0-0') is None
    assert registry.ready(b'worker-0-0', 2) is None
    registry.hello(b'worker-0-0', hello(), remote=False)  # back: loading again, READY counts again
    assert registry.get(b'worker-0-0', remote=False).state == 'loading'
    assert registry.ready(b'worker-0-0', 2) == 2


def test_status_lists_every_worker_with_its_batches(registry):
    registry.hello(b'worker-0-0', hello(), remote=False)
    registry.hello(b'remote-x', hello(host='b', pid=9), remote=True)
    registry.ready(b'worker-0-0', 2)
    status = registry.status({'0': 5, 'REMOTE-b-9': 1, 'gone': 3}, {'0': 40})
    idle = {'busy_seconds': 0.0, 'busy_fraction': 0.0}
    assert status == [
        {'name': 'WORKER-0', 'label': '0', 'host': 'h', 'device': 'cpu', 'state': 'ready', 'remote': False,
         'batches': 5, 'sequences': 40, **idle},
        {'name': 'REMOTE-b-9', 'label': 'REMOTE-b-9', 'host': 'b', 'device': 'cpu', 'state': 'loading',
         'remote': True, 'batches': 1, 'sequences': 0, **idle},
    ]


def test_busy_fraction_is_the_share_of_the_last_minute_spent_on_batches(registry):
    """Heartbeats say how many seconds the worker has spent on batches; the fraction is their rise
    over the time between the oldest and newest heartbeat of the last minute."""
    registry.hello(b'worker-0-0', hello(), remote=False)
    info = registry.get(b'worker-0-0', remote=False)
    registry.busy(b'worker-0-0', 0.0, now=100.0)
    assert info.busy_fraction(100.0) == 0.0  # one heartbeat: no span yet
    for t in range(1, 31):  # 30 s busy a quarter of the time
        registry.busy(b'worker-0-0', 0.25 * t, now=100.0 + t)
    assert info.busy_fraction(130.0) == pytest.approx(0.25)
    for t in range(31, 91):  # then 60 s fully busy: the first 30 s fall out of the window
        registry.busy(b'worker-0-0', 7.5 + (t - 30), now=100.0 + t)
    assert info.busy_fraction(190.0) == pytest.approx(1.0)
    registry.busy(b'worker-0-0', None, now=191.0)  # a worker that does not say: nothing recorded
    assert registry.status({}, now=190.0)[0]['busy_seconds'] == pytest.approx(67.5)
    assert len(info.busy) <= 64, 'the samples kept per worker are bounded'
    registry.busy(b'unknown', 1.0)  # a worker it does not know: ignored
