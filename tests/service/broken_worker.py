"""A worker process whose featurize thread dies: its engine's featurize raises KeyError (a type the
worker does not expect from a tokenizer) on inputs holding ``__receiver_bug__``; otherwise it is the
fake engine. test_lifecycle.py starts it in place of ``bert_serving.server.pipeline.worker``.

Run as ``python -c 'from broken_worker import main; main()'`` with this folder on PYTHONPATH; the
spec comes on stdin as for the real worker.
"""
from __future__ import annotations

from bert_serving.server.engine import fake
from bert_serving.server.pipeline import worker

__all__ = ['main']

BROKEN_WORD = '__receiver_bug__'


class BrokenFakeEngine(fake.FakeEngine):
    def featurize(self, texts, is_tokenized=False):
        if any(isinstance(t, str) and BROKEN_WORD in t for t in texts):
            raise KeyError(f'{BROKEN_WORD}: a tokenizer bug')
        return super().featurize(texts, is_tokenized)


def main() -> None:
    fake.FakeEngine = BrokenFakeEngine  # create_engine imports it from the module when it runs
    worker.main()
