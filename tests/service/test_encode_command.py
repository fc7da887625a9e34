"""bert-serving-encode as a user runs it, in a subprocess against real servers (``-engine fake``):
its output equals one ``BertClient.encode`` of the whole corpus, and a run stopped by Ctrl-C
(SIGINT) or killed outright (SIGKILL) is finished by the next run without encoding a finished
row again, into files equal to those of an uninterrupted run.

Two servers of the module: SLOW (the fake engine sleeps per input, so a run lasts seconds and can
be stopped half-way) and FAST, whose statistics only the resumed runs touch, so they count
exactly what a resumed run sent.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service_support import FAKE, REPLY_MS, sentence, wait_until

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
RUN_SECONDS = 60  # every run of the command must end within this
ROWS = 2000
# SLOW takes ROWS * ROW_SECONDS = 20 s for the corpus, so the signal reaches the command long before
# it ends even when the test's own process gets the CPU late on a loaded machine. The first run is
# stopped as soon as some rows are saved, so the test does not wait the 20 s.
ROW_SECONDS = 0.01


def command(running, *args: str) -> list:
    return [sys.executable, '-m', 'bert_serving.client.encode_cli', *args, '-ip', '127.0.0.1',
            '-port', str(running.port), '-port_out', str(running.port_out), '-timeout', str(REPLY_MS)]


def env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / 'bert_serving_server'),
                                                        str(REPO / 'bert_serving_client')]))


def run(running, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(running, *args), capture_output=True, text=True, env=env(), timeout=RUN_SECONDS)


def encoded_this_run(stderr: str) -> tuple:
    """(rows encoded, first row) from the command's last line."""
    found = re.search(r'encoded (\d+) rows this run from row (\d+)', stderr)
    assert found, stderr
    return int(found.group(1)), int(found.group(2))


@pytest.fixture(scope='module')
def slow(launch):
    with launch(FAKE, ['-fake_row_seconds', repr(ROW_SECONDS)]) as running:
        yield running


@pytest.fixture(scope='module')
def fast(launch):
    with launch(FAKE) as running:
        yield running


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    """ROWS sentences a line, and the files of one uninterrupted run on them (made on FAST)."""
    folder = tmp_path_factory.mktemp('corpus')
    path = folder / 'corpus.txt'
    path.write_text(''.join(sentence(i) + '\n' for i in range(ROWS)), encoding='utf-8')
    return path


@pytest.fixture(scope='module')
def uninterrupted(fast, corpus, tmp_path_factory):
    """The .npy and ids of one run of the command, start to end, on FAST."""
    output = tmp_path_factory.mktemp('whole') / 'vectors.npy'
    done = run(fast, str(corpus), str(output))
    assert done.returncode == 0, done.stderr
    return output.read_bytes(), output.with_name('vectors.ids.txt').read_bytes()


def test_output_equals_one_encode_of_the_corpus(shared_server, tmp_path):
    texts = [sentence(i) for i in range(300)]
    rows = [{'text': t, 'doc': f'd{i}'} for i, t in enumerate(texts)]
    (tmp_path / 'docs.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows), encoding='utf-8')
    done = run(shared_server, str(tmp_path / 'docs.jsonl'), str(tmp_path / 'v.npy'), '--jsonl-field', 'text',
               '--id-field', 'doc', '--batch-size', '32')
    assert done.returncode == 0, done.stderr
    assert encoded_this_run(done.stderr) == (300, 0)
    assert done.stdout == ''  # a pipe is no terminal: no progress bar, and stdout stays free
    with shared_server.client() as bc:
        expected = bc.encode(texts)
    vectors = np.load(tmp_path / 'v.npy')
    assert vectors.dtype == np.float32 and vectors.shape == expected.shape
    np.testing.assert_array_equal(vectors, expected)
    assert (tmp_path / 'v.ids.txt').read_text().splitlines() == [r['doc'] for r in rows]


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell starts a script's background job


# 'sigint-after-ignored': the command starts with SIGINT ignored, as `bert-serving-encode ... &` in a
# script does; Ctrl-C (kill -INT) must still stop it and save.
@pytest.mark.parametrize('stop, preexec', [(signal.SIGINT, None), (signal.SIGINT, _ignore_sigint),
                                           (signal.SIGKILL, None)],
                         ids=['sigint', 'sigint-after-ignored', 'sigkill'])
def test_a_stopped_run_is_finished_by_the_next_one(slow, fast, corpus, uninterrupted, tmp_path, stop, preexec):
    output = tmp_path / 'vectors.npy'
    progress = tmp_path / 'vectors.progress.json'

    def done_rows() -> int:
        try:
            return json.loads(progress.read_text())['done']
        except (FileNotFoundError, ValueError):  # not written yet
            return 0

    first = subprocess.Popen(command(slow, str(corpus), str(output), '--batch-size', '100', '--in-flight', '2'),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), preexec_fn=preexec)
    try:
        assert wait_until(lambda: done_rows() > 0 or first.poll() is not None, RUN_SECONDS, interval=0.05)
        assert first.poll() is None, 'the first run ended before it could be stopped'
        first.send_signal(stop)
        _, err = first.communicate(timeout=RUN_SECONDS)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    saved = done_rows()
    assert 0 < saved < ROWS
    if stop == signal.SIGINT:
        assert first.returncode == 130
        assert err.strip().splitlines()[-1] == (f'bert-serving-encode: interrupted; {saved} of {ROWS} rows are saved '
                                                f'in {output}: run the same command again to go on')
    else:
        assert first.returncode == -signal.SIGKILL

    with fast.client() as bc:
        before = bc.server_status['statistic']['num_total_seq']
    second = run(fast, str(corpus), str(output))
    assert second.returncode == 0, second.stderr
    assert encoded_this_run(second.stderr) == (ROWS - saved, saved)
    with fast.client() as bc:
        assert bc.server_status['statistic']['num_total_seq'] - before == ROWS - saved  # nothing done twice
    assert (output.read_bytes(), output.with_name('vectors.ids.txt').read_bytes()) == uninterrupted
