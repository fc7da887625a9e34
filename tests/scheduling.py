"""How pytest-xdist (``make test`` runs ``-n 6``) shares the tests between its workers.

A test that uses a module-scoped fixture (a server, a model written to disk, a soak run) runs on the
worker that runs the rest of its file, so the fixture is built once; any other test may run on any
worker. The files of ``RUN_FIRST`` start first, so that the short tests fill the other workers
meanwhile and the run does not end waiting on one long file; the other files follow with the test
folders interleaved (``_spread``).

Each worker writes the group of every test it collected to a file of the run (the controlling
process collects nothing itself); the scheduler reads it once all workers have collected. Loaded by
tests/conftest.py; without xdist only the ordering applies.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

__all__ = ['RUN_FIRST']

# The files whose tests take longest (chaos, cut links, timeouts, a real model), longest first;
# measured with --durations on the 2-core machine.
RUN_FIRST = (
    'tests/soak/test_soak.py',
    'tests/network/test_cut_link.py',
    'tests/examples/test_examples.py',
    'tests/network/test_remote_worker.py',
    'tests/service/test_finetuned_cli.py',
    'tests/security/test_port_out.py',
    'tests/service/test_big_request.py',
    'tests/http/test_bundled_model.py',
    'tests/network/test_secure_network.py',
    'tests/http/test_proxy.py',
)
_SHARED_SCOPES = {'module', 'class', 'package'}
_GROUPS_KEY = 'bert_serving_test_groups'

_groups_dir: str | None = None


def _file_of(nodeid: str) -> str:
    return nodeid.split('::')[0]


def _group(item: pytest.Item) -> str:
    """The test's own id, or its file's path when it shares a fixture with the rest of its file."""
    info = getattr(item, '_fixtureinfo', None)
    scopes = {defs[-1].scope for defs in info.name2fixturedefs.values() if defs} if info else set()
    return _file_of(item.nodeid) if scopes & _SHARED_SCOPES else item.nodeid


def pytest_configure(config: pytest.Config) -> None:
    global _groups_dir
    if not hasattr(config, 'workerinput') and getattr(config.option, 'numprocesses', None):
        _groups_dir = tempfile.mkdtemp(prefix='bert-serving-test-groups-')


def pytest_unconfigure(config: pytest.Config) -> None:
    if _groups_dir is not None:
        shutil.rmtree(_groups_dir, ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    node.workerinput[_GROUPS_KEY] = _groups_dir


def _spread(files: list[str]) -> dict[str, float]:
    """Each file's place in the run, from 0 to 1: the files of each test folder spread evenly over the
    whole run, in their order. A folder's tests tend to spend their time alike (tests/engine computes
    in process, tests/service and tests/security mostly wait on timeouts and other processes), so
    folder after folder would run the computing files side by side, leaving the waiting ones
    nothing to overlap with at the end (on the 2-core machine the CPU was 50-80% busy over the last
    two minutes)."""
    by_folder: dict[str, list[str]] = {}
    for path in files:
        by_folder.setdefault(path.rsplit('/', 1)[0], []).append(path)
    return {path: (i + 0.5) / len(group) for group in by_folder.values() for i, path in enumerate(group)}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    first = {path: i for i, path in enumerate(RUN_FIRST)}
    place = _spread(list(dict.fromkeys(_file_of(item.nodeid) for item in items)))
    # stable: the tests of a file keep their order
    items.sort(key=lambda item: (first.get(_file_of(item.nodeid), len(first)), place[_file_of(item.nodeid)]))


@pytest.hookimpl(tryfirst=True)  # before xdist reports the collection to the controlling process
def pytest_collection_finish(session: pytest.Session) -> None:
    folder = getattr(session.config, 'workerinput', {}).get(_GROUPS_KEY)
    if folder:
        path = Path(folder) / f'{session.config.workerinput["workerid"]}.json'
        partial = path.with_suffix('.partial')
        partial.write_text(json.dumps({item.nodeid: _group(item) for item in session.items}))
        os.replace(partial, path)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Replaces xdist's default ``--dist load`` (test by test) by the grouping above."""
    if config.getvalue('dist') != 'load' or _groups_dir is None:
        return None  # an explicit --dist other than load is obeyed
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        groups: dict = {}

        def schedule(self) -> None:
            if not self.groups:
                written = sorted(Path(_groups_dir).glob('*.json'))
                self.groups = json.loads(written[0].read_text()) if written else {}
            self.config.option.loadscopereorder = False  # keep the collection's order
            super().schedule()

        def _split_scope(self, nodeid: str) -> str:
            return self.groups.get(nodeid) or _file_of(nodeid)

    return GroupScheduling(config, log)
