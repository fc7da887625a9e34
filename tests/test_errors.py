"""One error tree: every exception class that the client and the server packages define derives
from ``bert_serving.client.errors.BertServingError``, so ``except BertServingError`` catches
anything this project raises on purpose.

No class is exempt: the packages define no exception for internal control flow (stops are
signalled with events and return codes).
"""
from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from types import ModuleType
from typing import Dict, Iterator

import bert_serving.client
import bert_serving.server
from bert_serving.client.errors import BertServingError


def _modules() -> Iterator[ModuleType]:
    for package in (bert_serving.client, bert_serving.server):
        yield package
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):
            if info.name.endswith('.__main__'):  # runs bert-serving-start when imported
                continue
            yield importlib.import_module(info.name)


def _exception_classes() -> Dict[str, type]:
    found = {}
    for module in _modules():
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                found[f'{module.__name__}.{obj.__qualname__}'] = obj
    return found


def test_every_exception_class_derives_from_the_one_root():
    classes = _exception_classes()
    # The walk sees the classes of every layer: the client, the server, the engine, the pipeline, the proxy.
    assert {'bert_serving.client.errors.BadRequest', 'bert_serving.server.errors.EncodeError',
            'bert_serving.server.pipeline.messages.BadMessage', 'bert_serving.server.pipeline.request_queue.Refused',
            'bert_serving.server.pipeline.link.Rejected', 'bert_serving.server.http.errors.HttpError'} <= set(classes)
    outside = sorted(name for name, cls in classes.items() if not issubclass(cls, BertServingError))
    assert not outside, f'not under BertServingError: {outside}'


def test_the_walk_sees_every_class_statement():
    """A class defined inside a function or another class is not in its module's namespace, so the
    walk above would miss it: keep classes at module level (or extend the walk)."""
    hidden = []
    for module in _modules():
        tree = ast.parse(inspect.getsource(module))
        top_level = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
        hidden += [f'{module.__name__}:{node.lineno} {node.name}' for node in ast.walk(tree)
                   if isinstance(node, ast.ClassDef) and node.name not in top_level]
        assert all(inspect.isclass(vars(module).get(name)) for name in top_level), module.__name__
    assert not hidden, f'classes the walk cannot see: {hidden}'


def test_one_config_error_for_client_arguments_and_server_flags():
    from bert_serving.server import errors as server_errors

    assert server_errors.ConfigError is bert_serving.client.ConfigError
    assert issubclass(bert_serving.client.ConfigError, ValueError)
