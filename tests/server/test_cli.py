"""bert-serving-start refuses a bad flag or model with one line saying what to change, and exit code 2."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import bert_serving.client
import bert_serving.server
from bert_serving.server.cli import main


def _start_fails(capfd, argv) -> str:
    assert main(argv) == 2
    err = capfd.readouterr().err
    assert 'Traceback' not in err
    (line,) = [line for line in err.splitlines() if line.startswith('E:SERVER')]
    return line


def test_a_missing_model_dir_is_one_line_and_exit_2(capfd, tmp_path, free_port):
    line = _start_fails(capfd, ['-model_dir', str(tmp_path / 'absent'), '-port', str(free_port()),
                                '-port_out', str(free_port())])
    assert str(tmp_path / 'absent') in line and 'is not a directory' in line


def test_a_config_error_is_one_line_and_exit_2(capfd, free_port):
    port = str(free_port())
    line = _start_fails(capfd, ['-engine', 'fake', '-port', port, '-port_out', port])
    assert f'port and port_out must differ, both are {port}' in line


# The server as bert-serving-start runs it, with aiohttp (the http extra) made unimportable.
WITHOUT_HTTP_EXTRA = """
import sys
sys.modules['aiohttp'] = None  # `import aiohttp` now raises ImportError, as when it is not installed
from bert_serving.server.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_missing_http_extra_is_one_line_and_exit_2(free_port):
    sources = [str(Path(package.__file__).parents[2]) for package in (bert_serving.server, bert_serving.client)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*sources, os.environ.get('PYTHONPATH', '')]))
    argv = ['-engine', 'fake', '-num_worker', '1', '-http_port', str(free_port()), '-port', str(free_port()),
            '-port_out', str(free_port())]
    done = subprocess.run([sys.executable, '-c', WITHOUT_HTTP_EXTRA, *argv], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert 'Traceback' not in done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.startswith('E:')]
    assert '-http_port needs the http extra: pip install "bert-serving-server[http]"' in line
    assert 'aiohttp' in line  # the import that failed


def test_an_unknown_flag_is_argparse_s_exit_2(capfd):
    with pytest.raises(SystemExit) as info:
        main(['-no_such_flag'])
    assert info.value.code == 2
    assert '-no_such_flag' in capfd.readouterr().err


def test_the_start_up_table_never_shows_the_http_token(monkeypatch):
    from bert_serving.server.args import format_args, get_args_parser

    argv = ['-http_port', '8125', '-http_token', 's3cr3t-token', '-port', '7000']
    monkeypatch.setattr('sys.argv', ['bert-serving-start', *argv])
    table = format_args(get_args_parser().parse_args(argv))
    assert 's3cr3t-token' not in table
    assert '-http_token ***' in table.splitlines()[0] and 'http_token = ***' in table
