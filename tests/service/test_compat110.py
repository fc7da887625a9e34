"""The unmodified PyPI bert-serving-client 1.10.0 drives this server.

1.10.0 has the import name of our client (``bert_serving.client``), so it runs in a subprocess whose
PYTHONPATH is only ``.venv/compat110`` (where ``make install`` puts it). The subprocess saves what it
gets (np.save / JSON); the test compares that with what our own client gets from the same server.

The servers run the fake engine: what is tested is the wire (frames, headers, dtype and shape of the
arrays), which does not depend on the model; float32 [B, FAKE_WIDTH] arrays are checked as such.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bert_serving.client._version import __version__
from bert_serving.server.engine.fake import FAKE_WIDTH
from bert_serving.server.service import BertServer

from service_support import FAKE, SHARED_MAX_REQUEST_BYTES, sentence, server_args

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
COMPAT110 = REPO / '.venv' / 'compat110'

TEXTS = [sentence(i) for i in range(10)] + ['how old are you? ||| what is your age?']
TOKENIZED = [['hello', 'world'], ['the', 'quick', 'brown', 'fox'], ['how', 'old', '|||', 'what', 'age']]

# Runs under bert-serving-client 1.10.0 with no shim: it imports and runs as published on numpy 2
# and pyzmq 27 (zmq.utils.jsonapi still exists; np.frombuffer of a memoryview is unchanged).
SCRIPT = textwrap.dedent('''
    import json, sys
    from pathlib import Path

    import numpy as np
    import bert_serving.client as package
    from bert_serving.client import BertClient, ConcurrentBertClient

    port, port_out, out = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    job = json.loads((out / 'job.json').read_text())
    report = {'version': package.__version__, 'file': package.__file__}
    # As user code constructs it: only the address differs from the defaults (no check_version=False,
    # no timeout); the subprocess itself is bounded by the test.
    bc = BertClient(port=port, port_out=port_out)
    np.save(out / 'encode.npy', bc.encode(job['texts']))
    np.save(out / 'tokenized.npy', bc.encode(job['tokenized'], is_tokenized=True))
    vectors, tokens = bc.encode(job['texts'], show_tokens=True)
    np.save(out / 'show_tokens.npy', vectors)
    report['tokens'] = tokens
    for chunk in job['chunks']:
        assert bc.encode(chunk, blocking=False) is None
    np.save(out / 'fetch_all.npy', bc.fetch_all(concat=True))
    report['server_config'] = bc.server_config
    report['server_status'] = bc.server_status
    try:  # over the server's request limit: 1.10 has no error reply type, but must not hang
        bc.encode(['word ' * 20] * job['too_many'])
        report['error'] = None
    except Exception as e:
        report['error'] = '%s: %s' % (type(e).__name__, e)
    np.save(out / 'after_error.npy', bc.encode(job['texts'][:2]))
    bc.close()
    cbc = ConcurrentBertClient(max_concurrency=2, port=port, port_out=port_out)
    np.save(out / 'concurrent.npy', cbc.encode(texts=job['texts']))
    cbc.close()
    (out / 'report.json').write_text(json.dumps(report))
''')


@pytest.fixture(scope='module')
def compat_run(shared_server, tmp_path_factory):
    """Runs SCRIPT once against the shared server; returns its output folder."""
    if not (COMPAT110 / 'bert_serving' / 'client' / '__init__.py').is_file():
        pytest.fail(f'bert-serving-client 1.10.0 is not installed in {COMPAT110}: run `make install`, or '
                    f'.venv/bin/pip install --no-deps --target .venv/compat110 bert-serving-client==1.10.0',
                    pytrace=False)
    out = tmp_path_factory.mktemp('compat110')
    job = {'texts': TEXTS, 'tokenized': TOKENIZED, 'chunks': [TEXTS[:3], TEXTS[3:4], TEXTS[4:]],
           'too_many': SHARED_MAX_REQUEST_BYTES // 100 + 100}
    (out / 'job.json').write_text(json.dumps(job))
    (out / 'run.py').write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env['PYTHONPATH'] = str(COMPAT110)
    done = subprocess.run([sys.executable, str(out / 'run.py'), str(shared_server.port),
                           str(shared_server.port_out), str(out)],
                          env=env, cwd=str(out), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f'the 1.10.0 client failed:\n{done.stderr[-3000:]}'
    return out


@pytest.fixture(scope='module')
def ours(shared_server):
    """What our client gets for the same requests."""
    with shared_server.client() as bc:
        vectors, tokens = bc.encode(TEXTS, show_tokens=True)
        tokenized = bc.encode(TOKENIZED, is_tokenized=True)
    return {'vectors': np.array(vectors), 'tokens': tokens, 'tokenized': np.array(tokenized)}


def _report(out: Path) -> dict:
    return json.loads((out / 'report.json').read_text())


def test_it_is_the_published_client(compat_run):
    report = _report(compat_run)
    assert report['version'] == '1.10.0'
    assert Path(report['file']).resolve().is_relative_to(COMPAT110.resolve())


def test_encode_matches_our_client(compat_run, ours):
    for name in ('encode', 'show_tokens', 'fetch_all', 'concurrent'):
        got = np.load(compat_run / f'{name}.npy')
        assert got.dtype == np.float32 and got.shape == (len(TEXTS), FAKE_WIDTH), name
        np.testing.assert_allclose(got, ours['vectors'], atol=1e-6, err_msg=name)


def test_is_tokenized_matches_our_client(compat_run, ours):
    np.testing.assert_allclose(np.load(compat_run / 'tokenized.npy'), ours['tokenized'], atol=1e-6)


def test_show_tokens_matches_our_client(compat_run, ours):
    assert _report(compat_run)['tokens'] == ours['tokens']


def test_server_config_and_status(compat_run):
    report = _report(compat_run)
    config, status = report['server_config'], report['server_status']
    assert config['max_seq_len'] == 25
    assert config['show_tokens_to_client'] is True
    assert config['num_worker'] == 2 and config['max_batch_size'] == 4
    assert config['pooling_strategy'] == 'REDUCE_MEAN'
    assert 'statistic' not in config
    # 1.10.0 refuses any server_version but its own; ours goes under server_release.
    assert config['server_version'] == '1.10.0'
    assert config['server_release'] == __version__ and config['protocol_version'] == 1
    assert config['tensorflow_version'].startswith('2.')
    assert status['statistic']['num_data_request'] >= 6
    assert status['num_ready_worker'] == 2


def test_server_error_reaches_the_old_client_and_it_goes_on(compat_run, ours):
    """1.10.0 knows no error reply; the 4-frame error makes it raise rather than wait forever."""
    error = _report(compat_run)['error']  # TypeError: data type 'server error: ...' not understood
    assert error is not None and 'server error: request of' in error and 'exceeds the server limit' in error
    np.testing.assert_allclose(np.load(compat_run / 'after_error.npy'), ours['vectors'][:2], atol=1e-6)


DEFAULT_PORTS_SCRIPT = textwrap.dedent('''
    import sys
    from bert_serving.client import BertClient
    vec = BertClient().encode(['First do it', 'then do it right', 'then do it better'])
    print(vec.shape, vec.dtype)
''')


def test_the_two_lines_users_write_on_the_default_ports(tmp_path):
    """``BertClient()`` with no argument at all, against a server on the default ports 5555/5556."""
    for port in (5555, 5556):
        with socket.socket() as s:
            if s.connect_ex(('127.0.0.1', port)) == 0:
                pytest.fail(f'port {port} is taken (a server left running?); this test needs the default ports',
                            pytrace=False)
    (tmp_path / 'two_lines.py').write_text(DEFAULT_PORTS_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env['PYTHONPATH'] = str(COMPAT110)
    with BertServer(server_args(FAKE, 5555, 5556)):
        done = subprocess.run([sys.executable, str(tmp_path / 'two_lines.py')], env=env, cwd=str(tmp_path),
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f'(3, {FAKE_WIDTH}) float32'
