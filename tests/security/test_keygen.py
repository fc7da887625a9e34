"""``bert-serving-keygen`` writes a secret key only into a folder that nobody else owns or can write
to: anyone who could would read the secret, or swap the keys (and, in ``authorized/``, let
themselves in)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from bert_serving.server.cli import keygen
from bert_serving.server.security import AUTHORIZED_DIR

NOBODY = 65534


def _refused(folder: Path, name: str, capsys) -> str:
    assert keygen([str(folder), name]) == 2
    err = capsys.readouterr().err
    assert err.startswith('bert-serving-keygen: ')
    assert not (folder / f'{name}.key_secret').exists() and not (folder / f'{name}.key').exists()
    return err


@pytest.mark.parametrize('mode, who', [(0o777, 'others'), (0o757, 'others'), (0o770, 'its group')])
def test_a_folder_writable_by_others_is_refused(tmp_path, capsys, mode, who):
    folder = tmp_path / 'keys'
    folder.mkdir()
    folder.chmod(mode)
    err = _refused(folder, 'alice', capsys)
    assert f'writable by {who}' in err and f'chmod 700 {folder}' in err


def test_a_folder_of_another_user_is_refused(tmp_path, capsys):
    if os.geteuid() == 0:
        folder = tmp_path / 'theirs'
        folder.mkdir(mode=0o700)
        os.chown(folder, NOBODY, NOBODY)
    else:  # a folder root owns; the check comes before any write, so no permission is needed
        folder = Path('/')
    err = _refused(folder, 'alice', capsys)
    assert 'belongs to another user' in err and f'chown {os.geteuid()} {folder}' in err


def test_an_authorized_folder_writable_by_others_is_refused(tmp_path, capsys):
    folder = tmp_path / 'keys'
    (folder / AUTHORIZED_DIR).mkdir(parents=True, mode=0o700)
    folder.chmod(0o700)
    (folder / AUTHORIZED_DIR).chmod(0o777)
    err = _refused(folder, 'server', capsys)
    assert f'chmod 700 {folder / AUTHORIZED_DIR}' in err


@pytest.mark.parametrize('mode', [0o700, 0o755])
def test_a_private_folder_of_ones_own_is_used(tmp_path, capsys, mode):
    folder = tmp_path / 'keys'
    folder.mkdir()
    folder.chmod(mode)
    assert keygen([str(folder), 'server']) == 0
    assert (folder / 'server.key_secret').is_file() and (folder / AUTHORIZED_DIR).is_dir()


def test_a_file_in_place_of_the_folder_is_refused(tmp_path, capsys):
    (tmp_path / 'keys').write_text('not a folder')
    assert 'is not a folder' in _refused(tmp_path / 'keys', 'alice', capsys)
