"""Helpers of the deploy tests: the files under deploy/, and the parsers of our commands.

Every command line that a deployment file runs is checked against the real argparse parser of that
command, so a renamed or removed flag fails here instead of in a cluster. The parsers:

- ``bert-serving-start``: ``bert_serving.server.args.get_args_parser()``;
- ``bert-serving-worker``: ``bert_serving.server.args.get_worker_parser()``;
- ``bert-serving-keygen``: its console-script function (named in setup_server.py), run for real into
  a temporary directory, since it has no parser of its own to ask.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import inspect
import io
import re
import shlex
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / 'deploy'
K8S = DEPLOY / 'k8s'
SYSTEMD = DEPLOY / 'systemd'
DOCKERFILE = DEPLOY / 'Dockerfile'

START, WORKER, KEYGEN = 'bert-serving-start', 'bert-serving-worker', 'bert-serving-keygen'
_NUMBER = re.compile(r'^-\d+(\.\d+)?$')  # a negative value such as -pooling_layer -2, not a flag

# Flags that decide which vector comes out for an input: the server refuses a remote worker whose
# fingerprint (model files + these) differs from its own, so a front and its workers must agree.
ENGINE_DESTS = ('model_dir', 'tuned_model_dir', 'ckpt_name', 'config_name', 'max_seq_len', 'do_lower_case',
                'pooling_layer', 'pooling_strategy', 'mask_cls_sep', 'no_special_token',
                'no_position_embeddings', 'num_labels', 'fixed_embed_length', 'fp16', 'engine')


# -- our commands ---------------------------------------------------------------------------------
def console_scripts() -> Dict[str, str]:
    """``{command: 'module:function'}`` from setup_server.py's console_scripts, read without running it."""
    tree = ast.parse((REPO / 'setup_server.py').read_text(encoding='utf-8'))
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == 'entry_points':
            entry_points = ast.literal_eval(node.value)
            return {name.strip(): target.strip() for name, target in
                    (line.split('=', 1) for line in entry_points['console_scripts'])}
    raise AssertionError('setup_server.py has no entry_points')


def server_extras() -> Dict[str, List[str]]:
    """setup_server.py's extras_require (its values are f-strings, so only the keys are exact)."""
    tree = ast.parse((REPO / 'setup_server.py').read_text(encoding='utf-8'))
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == 'extras_require' and isinstance(node.value, ast.Dict):
            return {ast.literal_eval(k): ast.unparse(v) for k, v in zip(node.value.keys, node.value.values)}
    raise AssertionError('setup_server.py has no extras_require')


def _parser_getter(module: str, name: str, what: str) -> Callable[[], argparse.ArgumentParser]:
    try:
        getter = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        pytest.fail(f'{what} has no parser yet: {module}.{name}() is missing ({e}). The deployment files use '
                    f'it (issue 10: remote workers, CurveZMQ, HTTP tokens); this test passes once it lands.',
                    pytrace=False)
    return getter


def parser_for(command: str) -> argparse.ArgumentParser:
    """The argparse parser of ``bert-serving-start`` or ``bert-serving-worker``."""
    if command == START:
        return _parser_getter('bert_serving.server.args', 'get_args_parser', START)()
    if command == WORKER:
        return _parser_getter('bert_serving.server.args', 'get_worker_parser', WORKER)()
    raise AssertionError(f'{command!r} is not a command with a parser here')


def parse_command(argv: List[str], where: str) -> argparse.Namespace:
    """Parses ``[command, *args]`` with the command's real parser; fails with argparse's message.

    Args:
        argv: the command (a path is fine: only its last component counts) and its arguments.
        where: the file and object the line comes from, for the failure message.
    """
    command = Path(argv[0]).name
    assert command in (START, WORKER), f'{where}: runs {argv[0]!r}, not one of our commands'
    assert command in console_scripts(), f'{where}: {command} is not a console script of setup_server.py'
    parser = parser_for(command)
    # argparse reads an unknown single-dash flag as a known prefix plus a value (-http_token_file
    # as -h ttp_token_file), which hides the cause: name unknown flags first.
    known = set(parser._option_string_actions)
    unknown = [a for a in argv[1:] if a.startswith('-') and a not in known and not _NUMBER.match(a)]
    if unknown:
        pytest.fail(f'{where}: {command} has no flag {", ".join(unknown)} (yet?): the deployment files use it',
                    pytrace=False)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return parser.parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f'{where}: {command} refuses {shlex.join(argv[1:])}:\n{stderr.getvalue()}', pytrace=False)


def run_keygen(args: List[str]) -> None:
    """Runs ``bert-serving-keygen`` in-process through its console-script function.

    The function may take ``argv`` as its parameter (as ``bert_serving.server.cli.main`` does) or read
    ``sys.argv``; both are served.
    """
    target = console_scripts().get(KEYGEN)
    if target is None:
        pytest.fail(f'{KEYGEN} is not a console script of setup_server.py yet (issue 10: it should be '
                    f'bert_serving.server.cli:<function>); this test passes once it lands.', pytrace=False)
    module, _, name = target.partition(':')
    function = _parser_getter(module, name, KEYGEN)
    stderr = io.StringIO()
    saved = sys.argv
    sys.argv = [KEYGEN, *args]
    try:
        with contextlib.redirect_stderr(stderr):
            status = function(args) if inspect.signature(function).parameters else function()
    except SystemExit as e:
        status = e.code
    finally:
        sys.argv = saved
    assert status in (0, None), f'{KEYGEN} {shlex.join(args)} exited with {status}:\n{stderr.getvalue()}'


def engine_flags(ns: argparse.Namespace) -> dict:
    """The output-shaping flags of a parsed command (those of ENGINE_DESTS that its parser has)."""
    return {dest: getattr(ns, dest) for dest in ENGINE_DESTS if hasattr(ns, dest)}


# -- Kubernetes -----------------------------------------------------------------------------------
def kustomization() -> dict:
    return yaml.safe_load((K8S / 'kustomization.yaml').read_text(encoding='utf-8'))


def manifest_files() -> List[Path]:
    """The resource files kustomization.yaml lists, in its order."""
    return [K8S / name for name in kustomization()['resources']]


def resources() -> List[dict]:
    """Every Kubernetes object of the manifests."""
    found = []
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text(encoding='utf-8')):
            if doc:
                doc.setdefault('__file__', path.name)
                found.append(doc)
    return found


def k8s_object(kind: str, name: str) -> dict:
    matches = [r for r in resources() if r['kind'] == kind and r['metadata']['name'] == name]
    assert len(matches) == 1, f'expected one {kind} named {name}, found {len(matches)}'
    return matches[0]


def without_marker(resource: dict) -> dict:
    return {k: v for k, v in resource.items() if k != '__file__'}


def container_argv(container: dict) -> List[str]:
    """The command line a container runs: command + args (the image's entrypoint is not used)."""
    assert container.get('command'), f'container {container["name"]} must name its command explicitly'
    return [str(x) for x in container['command']] + [str(x) for x in container.get('args', [])]


def resolve_port(container: dict, port) -> int:
    """A probe's or a Service's port, by name or by number, as the container's port number."""
    ports = {p['name']: p['containerPort'] for p in container.get('ports', []) if 'name' in p}
    if isinstance(port, str):
        assert port in ports, f'port {port!r} is not a named port of container {container["name"]}: {ports}'
        return ports[port]
    assert port in ports.values(), f'port {port} is not a containerPort of {container["name"]}: {ports}'
    return port


def mounted_files(pod_spec: dict, container: dict) -> Dict[str, tuple]:
    """Files that Secret volumes put in the container: ``{absolute path: (secret name, key)}``.

    Only volumes that list their items are understood; each deployment here lists them, so that
    the test knows every file's path.
    """
    volumes = {v['name']: v for v in pod_spec.get('volumes', [])}
    files = {}
    for mount in container.get('volumeMounts', []):
        volume = volumes[mount['name']]
        sources = []
        if 'secret' in volume:
            sources.append((volume['secret']['secretName'], volume['secret'].get('items')))
        for source in volume.get('projected', {}).get('sources', []):
            if 'secret' in source:
                sources.append((source['secret']['name'], source['secret'].get('items')))
        for secret, items in sources:
            assert items, f'volume {volume["name"]}: list the items of Secret {secret}, so their paths are known'
            for item in items:
                files[f'{mount["mountPath"].rstrip("/")}/{item["path"]}'] = (secret, item['key'])
    return files


def secret_references(pod_spec: dict) -> Dict[str, set]:
    """``{secret name: keys used}`` over volumes, env and envFrom of a pod."""
    refs: Dict[str, set] = {}
    for volume in pod_spec.get('volumes', []):
        if 'secret' in volume:
            s = volume['secret']
            refs.setdefault(s['secretName'], set()).update(i['key'] for i in s.get('items', []))
        for source in volume.get('projected', {}).get('sources', []):
            if 'secret' in source:
                s = source['secret']
                refs.setdefault(s['name'], set()).update(i['key'] for i in s.get('items', []))
    for container in pod_spec.get('containers', []) + pod_spec.get('initContainers', []):
        for env in container.get('env', []):
            ref = env.get('valueFrom', {}).get('secretKeyRef')
            if ref:
                refs.setdefault(ref['name'], set()).add(ref['key'])
        for env_from in container.get('envFrom', []):
            if 'secretRef' in env_from:
                refs.setdefault(env_from['secretRef']['name'], set())
    return refs


def generated_secrets() -> Dict[str, Dict[str, str]]:
    """kustomization.yaml's secretGenerator: ``{secret name: {key: file path}}``."""
    out = {}
    for gen in kustomization().get('secretGenerator', []):
        keys = {}
        for entry in gen.get('files', []):
            key, _, path = entry.partition('=') if '=' in entry else (Path(entry).name, '', entry)
            keys[key] = path
        for literal in gen.get('literals', []):
            keys[literal.split('=', 1)[0]] = ''
        out[gen['name']] = keys
    return out


# -- Dockerfile -----------------------------------------------------------------------------------
def dockerfile_instructions(text: Optional[str] = None) -> List[tuple]:
    """``[(INSTRUCTION, arguments)]`` with continuation lines joined and comments dropped."""
    lines, current = [], ''
    for raw in (text if text is not None else DOCKERFILE.read_text(encoding='utf-8')).splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith('#')):
            continue
        if current and stripped.startswith('#'):
            continue  # a comment inside a continued instruction
        if stripped.endswith('\\'):
            current += stripped[:-1] + ' '
            continue
        current += stripped
        lines.append(current)
        current = ''
    assert not current, 'the Dockerfile ends inside a continued line'
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if ' ' in line else '') for line in lines]


# -- systemd --------------------------------------------------------------------------------------
def unit_values(path: Path, key: str) -> List[str]:
    """Every value of ``key`` in a unit file, continuation lines joined, comments dropped."""
    logical, current = [], ''
    for raw in path.read_text(encoding='utf-8').splitlines():
        line = raw.strip()
        if line.startswith(('#', ';')):
            continue
        if line.endswith('\\'):
            current += line[:-1].rstrip() + ' '
            continue
        current += line
        if current and not current.startswith('['):
            logical.append(current)
        current = ''
    return [value.strip() for name, _, value in (line.partition('=') for line in logical) if name.strip() == key]


def systemd_argv(exec_start: str, instance: str = '0') -> List[str]:
    """Splits an ExecStart value as systemd does for our lines (quotes, no shell), with ``%i``
    replaced by ``instance``; a ``%`` specifier other than ``%i``/``%%`` fails the test."""
    prefix_free = exec_start.lstrip('@-:+!')
    text = prefix_free.replace('%%', '\0').replace('%i', instance)
    assert '%' not in text, f'ExecStart holds a specifier this test does not know: {exec_start}'
    return [part.replace('\0', '%') for part in shlex.split(text)]
