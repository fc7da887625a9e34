"""The start-up plan of the local workers, on this machine's CPU: the table of each worker's device,
threads and batch-token budget, the warning when CPU workers x threads exceed the cores, and the
budget in the server's status. (GPU plans are tested with given GPU lists in tests/engine/test_devices.py.)"""
import logging

from bert_serving.server.cpu import available_cores
from bert_serving.server.engine.devices import CPU_BATCH_TOKENS

from service_support import FAKE


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _logged(launch, flags):
    """(log lines of the ventilator while the server started, its server_config)."""
    records = _Records()
    logger = logging.getLogger('bert_serving.VENTILATOR')
    logger.addHandler(records)
    try:
        with launch(FAKE, flags) as running, running.client() as bc:
            config = bc.server_config
    finally:
        logger.removeHandler(records)
    return records.messages, config


def test_more_cpu_workers_than_cores_warn_and_the_table_shows_each_budget(launch):
    cores = available_cores()
    messages, config = _logged(launch, ['-num_worker', str(cores + 1)])
    warnings = [m for m in messages if 'exceed the' in m]
    assert warnings == [f'{cores + 1} CPU workers x 1 thread(s) = {cores + 1} exceed the {cores} CPU core(s) this '
                        f'server may use: the workers slow each other down and each holds a copy of the model. '
                        f'Use -num_worker {cores} or fewer']
    [table] = [m for m in messages if m.startswith('workers:')]
    print('\n' + table)
    rows = table.splitlines()[2:]
    assert len(rows) == cores + 1
    assert table.splitlines()[1].split() == ['WORKER', 'DEVICE', 'THREADS', '(intra', 'x', 'inter)', 'MAX_BATCH_TOKENS',
                                             'COMPUTE'], table
    assert all(row.split()[1:] == ['cpu', '1', 'x', '1', str(CPU_BATCH_TOKENS), 'float32'] for row in rows), table
    assert config['worker_max_batch_tokens'] == {f'WORKER-{i}': CPU_BATCH_TOKENS for i in range(cores + 1)}


def test_a_flag_sets_the_budget_and_few_workers_do_not_warn(launch):
    messages, config = _logged(launch, ['-num_worker', '1', '-max_batch_tokens', '777'])
    assert not [m for m in messages if 'exceed the' in m]
    assert config['worker_max_batch_tokens'] == {'WORKER-0': 777}
