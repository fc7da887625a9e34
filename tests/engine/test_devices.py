"""Tests for bert_serving.server.engine.devices: the device plan, given GPU lists, and each worker's
batch-token budget. This machine has no GPU; the planner takes the GPUs it sees as an argument."""
import logging

import pytest

from bert_serving.server.engine.devices import (CPU_BATCH_TOKENS, batch_token_budget, cpu_oversubscription,
                                                plan_devices)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append((record.levelno, record.getMessage()))

    def warnings(self):
        return [m for level, m in self.messages if level >= logging.WARNING]


@pytest.fixture
def records():
    logger = logging.getLogger('test-devices')
    logger.propagate = False
    handler = _Records()
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def plan(num_worker, gpus, free=None, device_map=(), cpu=False):
    """plan_devices with ``gpus`` GPUs seen, ``free`` of them free (default: all)."""
    def available(limit):
        return gpus, list(range(gpus) if free is None else free)[:limit]
    return plan_devices(num_worker, cpu, list(device_map), logging.getLogger('test-devices'), available=available)


def test_one_worker_per_free_gpu_and_no_warning(records):
    assert plan(2, 4) == [0, 1]
    assert plan(4, 4, free=[3, 1, 0, 2]) == [3, 1, 0, 2]
    assert records.warnings() == []


def test_more_workers_than_gpus_share_them_round_robin_with_one_warning(records):
    assert plan(5, 2) == [0, 1, 0, 1, 0]
    [warning] = records.warnings()
    assert '-num_worker 5 exceeds the 2 GPU(s) it can use [0, 1] (2 seen)' in warning
    assert '3 workers share one GPU' in warning and 'Use -num_worker 2' in warning


def test_device_map_is_reused_and_counted_by_distinct_gpus(records):
    assert plan(3, 4, device_map=[2, 3, 2]) == [2, 3, 2]
    [warning] = records.warnings()
    assert '-num_worker 3 exceeds the 2 GPU(s) it can use [2, 3] (4 seen)' in warning


def test_no_gpu_or_no_free_gpu_or_no_nvidia_smi_falls_back_to_cpu(records):
    assert plan(2, 0) == [-1, -1]
    assert plan(2, 2, free=[]) == [-1, -1]

    def broken(limit):
        raise OSError('nvidia-smi not found')
    assert plan_devices(2, False, [], logging.getLogger('test-devices'), available=broken) == [-1, -1]
    assert len(records.warnings()) == 3 and 'nvidia-smi not found' in records.warnings()[2]
    assert plan(2, 4, cpu=True) == [-1, -1]


def test_a_gpu_worker_gets_the_original_batch_and_a_cpu_worker_the_measured_optimum():
    assert batch_token_budget(0, None, 256, 25) == 256 * 25  # -max_seq_len 25, the default
    assert batch_token_budget(1, None, 256, 128) == 32768  # where 4096 allowed 32 rows
    assert batch_token_budget(0, None, 64, None) == 64 * 512  # NONE: inputs up to BERT's 512
    assert batch_token_budget(-1, None, 256, 128) == CPU_BATCH_TOKENS == 4096
    assert batch_token_budget(0, 1000, 256, 128) == batch_token_budget(-1, 1000, 256, 128) == 1000  # the flag wins


def test_a_mixed_plan_gives_each_worker_its_own_budget():
    devices = plan(3, 1, free=[0]) + [-1]
    assert [batch_token_budget(d, None, 256, 128) for d in devices] == [32768, 32768, 32768, 4096]


def test_cpu_workers_times_threads_over_the_cores_is_one_warning_line():
    assert cpu_oversubscription(2, 1, 2) is None
    assert cpu_oversubscription(4, 4, 16) is None
    warning = cpu_oversubscription(3, 1, 2)
    assert warning.startswith('3 CPU workers x 1 thread(s) = 3 exceed the 2 CPU core(s)')
    assert 'Use -num_worker 2 or fewer' in warning and '\n' not in warning
