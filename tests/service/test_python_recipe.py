"""The original README's "start BertServer from Python" recipe, saved as a plain script with no
``if __name__ == '__main__':`` guard, serves until it is shut down and then exits by itself.

Runs the script as a user would (``python recipe.py``) and stops it with both shutdown forms the
original documents. The script prints a marker first: a child process that re-imported the
user's script (as multiprocessing's spawn does) would print it again and start another server.
The recipe's server runs the fake engine (``-engine fake`` in place of ``-model_dir``): what is tested
is how its processes start and stop, not the model.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from bert_serving.server.service import BertServer

from bert_serving.server.engine.fake import FAKE_WIDTH

from service_support import REPLY_MS, assert_port_free

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

READY_SECONDS = 60
EXIT_SECONDS = 30
MARKER = 'recipe script imported'
REPO = Path(__file__).resolve().parents[2]
# The scripts run in a temporary folder: give them this tree's packages by absolute path.
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(str(REPO / d) for d in ('bert_serving_server', 'bert_serving_client')))

RECIPE = textwrap.dedent('''
    print({marker!r}, flush=True)
    from bert_serving.server.helper import get_args_parser
    from bert_serving.server import BertServer
    args = get_args_parser().parse_args(['-engine', 'fake',
                                         '-port', '{port}',
                                         '-port_out', '{port_out}',
                                         '-max_seq_len', 'NONE',
                                         '-mask_cls_sep',
                                         '-cpu'])
    server = BertServer(args)
    server.start()
''')

SHUTDOWN_FORMS = {
    'keyword': 'BertServer.shutdown(port={port})',
    'namespace': ('from bert_serving.server.helper import get_shutdown_parser\n'
                  "BertServer.shutdown(get_shutdown_parser().parse_args(['-ip', 'localhost', '-port', '{port}', "
                  "'-timeout', '5000']))"),
}


def _encode_when_ready(port: int, port_out: int, script: subprocess.Popen) -> np.ndarray:
    """Encodes one sentence as soon as the script's server answers; fails if the script exits."""
    from bert_serving.client import BertClient

    deadline = time.monotonic() + READY_SECONDS
    while True:
        assert script.poll() is None, 'the recipe script exited while it should be serving'
        try:
            with BertClient(ip='127.0.0.1', port=port, port_out=port_out, timeout=REPLY_MS) as bc:
                return bc.encode(['hello world', 'the recipe works'])
        except Exception:  # not bound yet, or workers still loading
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.mark.parametrize('form', sorted(SHUTDOWN_FORMS))
def test_guardless_recipe_serves_until_shutdown_then_exits(form, free_port, tmp_path):
    port, port_out = free_port(), free_port()
    script_path = tmp_path / 'recipe.py'
    script_path.write_text(RECIPE.format(marker=MARKER, port=port, port_out=port_out))
    log = (tmp_path / 'recipe.log').open('w+')
    script = subprocess.Popen([sys.executable, str(script_path)], cwd=str(tmp_path), stdout=log,
                              stderr=subprocess.STDOUT, text=True, env=ENV)
    try:
        vectors = _encode_when_ready(port, port_out, script)
        assert vectors.shape == (2, FAKE_WIDTH) and np.isfinite(vectors).all()
        time.sleep(1.0)
        assert script.poll() is None, 'the script ended although nobody shut its server down'

        # The user's shutdown line, run in its own interpreter as the README shows it.
        stopper = 'from bert_serving.server import BertServer\n' + SHUTDOWN_FORMS[form].format(port=port)
        subprocess.run([sys.executable, '-c', stopper], check=True, timeout=EXIT_SECONDS, env=ENV)
        assert script.wait(timeout=EXIT_SECONDS) == 0
    finally:
        if script.poll() is None:
            script.kill()
            script.wait()
        log.seek(0)
        output = log.read()
        log.close()
    assert output.count(MARKER) == 1, f'a child re-ran the user script:\n{output[-3000:]}'
    assert 'Traceback' not in output, output[-3000:]
    assert_port_free(port)
    assert_port_free(port_out)


def test_shutdown_in_the_same_script_right_after_start(free_port, tmp_path):
    """Users write ``server.start()`` then, later in the same script, ``BertServer.shutdown(port=...)``."""
    port, port_out = free_port(), free_port()
    script_path = tmp_path / 'recipe_and_stop.py'
    script_path.write_text(RECIPE.format(marker=MARKER, port=port, port_out=port_out)
                           + textwrap.dedent(f'''
                               from bert_serving.client import BertClient
                               server.is_ready.wait(120)
                               with BertClient(port={port}, port_out={port_out}, timeout=20000) as bc:
                                   print('shape', bc.encode(['one', 'two']).shape, flush=True)
                               print('stopped', BertServer.shutdown(port={port}), flush=True)
                           '''))
    done = subprocess.run([sys.executable, str(script_path)], cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=READY_SECONDS + EXIT_SECONDS, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f'shape (2, {FAKE_WIDTH})' in done.stdout and 'stopped True' in done.stdout, \
        done.stdout + done.stderr[-2000:]
    assert done.stdout.count(MARKER) == 1
    assert_port_free(port)


def test_shutdown_needs_a_port():
    with pytest.raises(ValueError, match=r'shutdown\(port=5555\)'):
        BertServer.shutdown()
