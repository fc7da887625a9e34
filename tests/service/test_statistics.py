"""server_status['statistic'] after known traffic, on a server that saw nothing else.

The traffic: client A sends data requests of 1 and 2 inputs and 2 SHOW_CONFIG; client B sends a
data request of 5 inputs, 1 SHOW_CONFIG, then the SHOW_STATUS that reads the figures (the
ventilator counts a request before it answers, so that one is counted too).
"""
from __future__ import annotations

import pytest

from service_support import FAKE

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope='module')
def status_after_known_traffic(launch):
    with launch(FAKE, ['-num_worker', '1']) as running:
        # No handshake: its SHOW_CONFIG is re-sent while unanswered, which would blur the counts.
        with running.client(ignore_all_checks=True) as a, running.client(ignore_all_checks=True) as b:
            a.encode(['one'])
            a.encode(['one', 'two'])
            b.encode(['one', 'two', 'three', 'four', 'five'])
            for client in (a, a, b):
                assert client.server_config['ready'] is True
            status = b.server_status
    return status


def test_request_and_sequence_counts(status_after_known_traffic):
    stat = status_after_known_traffic['statistic']
    assert stat['num_data_request'] == 3
    assert stat['num_total_seq'] == 8
    assert stat['num_sys_request'] == 4  # 3 SHOW_CONFIG + this SHOW_STATUS
    assert stat['num_total_request'] == 7


def test_client_counts(status_after_known_traffic):
    stat = status_after_known_traffic['statistic']
    assert stat['num_total_client'] == 2
    assert stat['num_active_client'] == 2  # both sent data within the last 3 minutes
    assert stat['max_request_per_client'] == 4 and stat['min_request_per_client'] == 3
    assert stat['avg_request_per_client'] == pytest.approx(3.5)
    assert stat['num_max_request_per_client'] == 1 and stat['num_min_request_per_client'] == 1


def test_size_per_request(status_after_known_traffic):
    stat = status_after_known_traffic['statistic']
    assert stat['min_size_per_request'] == 1
    assert stat['max_size_per_request'] == 5
    assert stat['avg_size_per_request'] == pytest.approx(8 / 3)
    assert stat['num_min_size_per_request'] == 1 and stat['num_max_size_per_request'] == 1


def test_interval_and_rate_figures_are_consistent(status_after_known_traffic):
    stat = status_after_known_traffic['statistic']
    for name in ('last_two_interval', 'request_per_second'):
        for key in (f'avg_{name}', f'min_{name}', f'max_{name}', f'num_min_{name}', f'num_max_{name}'):
            assert key in stat, key
        assert 0 < stat[f'min_{name}'] <= stat[f'avg_{name}'] <= stat[f'max_{name}']
    assert stat['avg_request_per_second'] > 0
    # The fastest rate is the inverse of the shortest interval between two data requests.
    assert stat['max_request_per_second'] == pytest.approx(1 / stat['min_last_two_interval'])
    assert stat['min_request_per_second'] == pytest.approx(1 / stat['max_last_two_interval'])


def test_status_holds_the_config_and_the_workers(status_after_known_traffic):
    status = status_after_known_traffic
    assert status['num_ready_worker'] == 1
    assert status['num_worker'] == 1 and status['max_seq_len'] == 25
    assert status['ready'] is True
