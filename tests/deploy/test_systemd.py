"""deploy/systemd: every ExecStart parses with our commands' parsers, and server and workers agree."""
from __future__ import annotations

import pytest

from deploy_support import SYSTEMD, START, WORKER, engine_flags, parse_command, systemd_argv, unit_values

UNITS = sorted(SYSTEMD.glob('*.service'))


def _argv(unit):
    exec_start = unit_values(unit, 'ExecStart')
    assert len(exec_start) == 1, f'{unit.name}: one ExecStart expected'
    return systemd_argv(exec_start[0])


def _parsed(name: str):
    unit = SYSTEMD / name
    return parse_command(_argv(unit), unit.name)


def test_the_units_are_there():
    assert [u.name for u in UNITS] == ['bert-serving-worker.service', 'bert-serving-worker@.service',
                                       'bert-serving.service']


@pytest.mark.parametrize('unit', UNITS, ids=lambda u: u.name)
def test_exec_start_parses_with_our_parser(unit):
    argv = _argv(unit)
    assert argv[0].startswith('/'), 'systemd wants an absolute path'
    parse_command(argv, unit.name)
    assert unit_values(unit, 'User') == ['bert-serving'], 'not root'


def test_workers_join_the_servers_worker_port_with_its_engine_flags():
    server = _parsed('bert-serving.service')
    assert server.port_worker is not None and server.auth_dir
    for name in ('bert-serving-worker.service', 'bert-serving-worker@.service'):
        worker = _parsed(name)
        assert worker.port_worker == server.port_worker, name
        assert server.port_worker_sink == server.port_worker + 1, 'the firewall table in docs/deploy.md'
        assert worker.server_key.startswith(server.auth_dir.rstrip('/') + '/')
        assert worker.server_key.endswith('/server.key') and worker.client_key.endswith('.key_secret')
        shared = engine_flags(server).keys() & engine_flags(worker).keys()
        assert {k: engine_flags(server)[k] for k in shared} == {k: engine_flags(worker)[k] for k in shared}, name


def test_gpu_template_puts_the_instance_on_device_map():
    argv = systemd_argv(unit_values(SYSTEMD / 'bert-serving-worker@.service', 'ExecStart')[0], instance='3')
    worker = parse_command(argv, 'bert-serving-worker@3.service')
    assert worker.device_map == [3] and not worker.cpu
    assert _parsed('bert-serving-worker.service').cpu


def test_server_unit_does_not_restart_on_bad_flags():
    # bert-serving-start exits 2 for a bad flag or model: restarting cannot help.
    assert unit_values(SYSTEMD / 'bert-serving.service', 'RestartPreventExitStatus') == ['2']
    assert _argv(SYSTEMD / 'bert-serving.service')[0].endswith('/' + START)
    assert _argv(SYSTEMD / 'bert-serving-worker.service')[0].endswith('/' + WORKER)
