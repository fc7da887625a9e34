"""The small data sets the examples run on, from ``examples/data``.

- ``topics.tsv``: ``label<TAB>sentence``, 20 short sentences on each of four topics.
- ``faq.tsv``: ``question<TAB>answer``, a small FAQ about this service.

Lines starting with ``#`` are comments.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import List, Tuple

__all__ = ['DATA_DIR', 'read_pairs', 'topics', 'faq', 'sentences']

DATA_DIR = Path(__file__).resolve().parent / 'data'


def read_pairs(path: Path) -> List[Tuple[str, str]]:
    """The ``(first, second)`` columns of a two-column TSV file, comments and blank lines skipped."""
    pairs = []
    for number, line in enumerate(Path(path).read_text(encoding='utf-8').splitlines(), 1):
        if not line.strip() or line.startswith('#'):
            continue
        first, sep, second = line.partition('\t')
        if not sep or not first.strip() or not second.strip():
            raise ValueError(f'{path}:{number}: expected two tab-separated columns, got {line!r}')
        pairs.append((first.strip(), second.strip()))
    return pairs


def topics(per_topic: int = 0) -> Tuple[List[str], List[str]]:
    """``(sentences, labels)`` of ``topics.tsv``, at most ``per_topic`` of each topic (0: all)."""
    taken: dict = {}
    sentences, labels = [], []
    for label, sentence in read_pairs(DATA_DIR / 'topics.tsv'):
        taken[label] = taken.get(label, 0) + 1
        if per_topic <= 0 or taken[label] <= per_topic:
            sentences.append(sentence)
            labels.append(label)
    return sentences, labels


def faq(path: Path = DATA_DIR / 'faq.tsv') -> Tuple[List[str], List[str]]:
    """``(questions, answers)`` of an FAQ file."""
    pairs = read_pairs(path)
    return [q for q, _ in pairs], [a for _, a in pairs]


def sentences(num: int) -> List[str]:
    """``num`` sentences: those of ``topics.tsv`` in turn, starting over when they run out."""
    pool, _ = topics()
    return list(itertools.islice(itertools.cycle(pool), num))
