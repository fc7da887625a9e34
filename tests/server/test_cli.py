"""bert-serving-start refuses a bad flag or model with one line saying what to change, and exit code 2."""
from __future__ import annotations

import pytest

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
