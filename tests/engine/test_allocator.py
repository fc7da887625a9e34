"""Workers ask TensorFlow for the system allocator (runner.prefer_system_allocator), so that the peak of
a large batch goes back to the system; a setting in the environment wins."""
from __future__ import annotations

import pytest

from bert_serving.server.engine.runner import SYSTEM_ALLOCATOR_ENV, prefer_system_allocator


def test_absent_it_is_turned_on(monkeypatch):
    monkeypatch.setenv(SYSTEM_ALLOCATOR_ENV, 'x')  # recorded, so that the teardown removes what the call sets
    monkeypatch.delenv(SYSTEM_ALLOCATOR_ENV)
    assert prefer_system_allocator() is True
    import os
    assert os.environ[SYSTEM_ALLOCATOR_ENV] == '1'


@pytest.mark.parametrize('value, used', [('0', False), ('false', False), ('1', True), ('true', True)])
def test_a_value_in_the_environment_wins(monkeypatch, value, used):
    monkeypatch.setenv(SYSTEM_ALLOCATOR_ENV, value)
    assert prefer_system_allocator() is used
    import os
    assert os.environ[SYSTEM_ALLOCATOR_ENV] == value


def test_a_worker_asks_for_it_before_it_loads_tensorflow():
    """The worker calls it in _load, before the engine (and TensorFlow's first allocation)."""
    import inspect

    from bert_serving.server.pipeline.worker import Worker
    source = inspect.getsource(Worker._load)
    assert source.index('prefer_system_allocator()') < source.index('create_engine(')
