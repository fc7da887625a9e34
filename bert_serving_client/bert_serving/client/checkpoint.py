"""The output of ``bert-serving-encode`` and what makes it resumable: a float32 ``.npy`` [N, D]
filled in place through a memory map, and a small progress file beside it.

For ``vectors.npy`` the files are::

    vectors.npy             float32 [N, D], row i the vector of record i (numpy.lib.format.open_memmap)
    vectors.ids.txt         N lines, line i the id of row i (written whole before any vector)
    vectors.progress.json   {"done": K, "rows": N, "width": D, "input": {...}}: rows [0, K) are final

The progress file is the only record of what is done. It is replaced atomically (``os.replace``)
and only after the rows it counts are flushed to the ``.npy``, so a run killed at any instant leaves
a progress file that undercounts, never overcounts: a resumed run encodes rows [K, N) again at most
once more, and never reads a row that was not written. Rows past K may hold anything.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from .errors import ConfigError

__all__ = ['Output', 'OUTPUT_DTYPE']

OUTPUT_DTYPE = np.dtype('float32')
PROGRESS_VERSION = 1


def _stem(path: str) -> str:
    return path[:-len('.npy')] if path.endswith('.npy') else path


def _write_atomically(path: str, text: str) -> None:
    """Writes ``path`` so that a reader (or a crash) sees the old content or the new, never a mix."""
    tmp = f'{path}.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Output:
    """The ``.npy`` being filled, its ids file and its progress file.

    Args:
        path: The ``.npy`` to write.
        ids_path: The ids file; ``<stem>.ids.txt`` by default.

    Attributes:
        done: Rows [0, done) are final.
        rows, width: The array's shape [N, D], once known.
    """

    def __init__(self, path: str, ids_path: Optional[str] = None):
        self.path = path
        self.ids_path = ids_path or _stem(path) + '.ids.txt'
        self.progress_path = _stem(path) + '.progress.json'
        self.done, self.rows, self.width = 0, 0, 0
        self._input: dict = {}
        self._array: Optional[np.memmap] = None

    def start(self, input_info: dict, rows: int, overwrite: bool) -> int:
        """Decides where to begin: 0 for a new output, else the rows a previous run finished.

        Args:
            input_info: What identifies the input (its fingerprint, format options and record count).
            rows: N, the number of records.
            overwrite: Begin at 0 whatever is there.

        Raises:
            ConfigError: The output exists but was not left by an unfinished run on this input (no
                progress file, another input, a damaged ``.npy``); the message says what to do.
        """
        self._input, self.rows = input_info, rows
        saved = None if overwrite else self._load()
        if saved is None:
            if not overwrite and os.path.exists(self.path):
                raise ConfigError(f'{self.path} exists, but {self.progress_path} does not: it was not left by an '
                                  'unfinished bert-serving-encode. Give another output, or pass --overwrite')
            return 0
        if saved.get('input') != input_info:
            raise ConfigError(f'{self.progress_path} was written for another input (or other --jsonl-field, '
                              '--csv-column, --id-field options): the input changed since that run. Run with the '
                              'input and options of that run, or pass --overwrite to start over')
        self.done, self.width = int(saved['done']), int(saved['width'])
        if self.done:
            try:
                self._array = np.lib.format.open_memmap(self.path, mode='r+')
            except (OSError, ValueError) as e:
                raise ConfigError(f'{self.path} cannot be read back ({e}); pass --overwrite to start over') from e
            if self._array.shape != (rows, self.width) or self._array.dtype != OUTPUT_DTYPE:
                raise ConfigError(f'{self.path} holds {self._array.dtype} {list(self._array.shape)}, but '
                                  f'{self.progress_path} expects {OUTPUT_DTYPE} {[rows, self.width]}; pass '
                                  '--overwrite to start over')
        return self.done

    def _load(self) -> Optional[dict]:
        try:
            with open(self.progress_path, encoding='utf-8') as f:
                saved = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise ConfigError(f'{self.progress_path} cannot be read ({e}); pass --overwrite to start over') from e
        if not isinstance(saved, dict) or saved.get('version') != PROGRESS_VERSION:
            raise ConfigError(f'{self.progress_path} is not a bert-serving-encode progress file of version '
                              f'{PROGRESS_VERSION}; pass --overwrite to start over')
        return saved

    def write_ids(self, ids_tmp: str) -> None:
        """Puts the ids file (written whole at ``ids_tmp``) in place."""
        os.replace(ids_tmp, self.ids_path)

    def write(self, start: int, vectors: np.ndarray) -> None:
        """Stores ``vectors`` ([B, D], any float dtype) as rows [start, start + B); the first call
        of a new output learns D and creates the ``.npy``.

        Raises:
            ConfigError: D differs from the width of the output being resumed.
        """
        if vectors.ndim != 2:
            raise ConfigError(f'the server returns {vectors.ndim}-D arrays {list(vectors.shape)}, not one vector '
                              'per sentence (is it started with -pooling_strategy NONE?); bert-serving-encode needs '
                              'a pooling strategy that gives [B, D]')
        if self._array is None:
            if self.width and vectors.shape[1] != self.width:
                raise ConfigError(f'the server returns vectors of width {vectors.shape[1]}, but {self.path} '
                                  f'holds width {self.width}: is it the server (model, pooling) of the earlier run?')
            self.width = vectors.shape[1]
            # The progress file comes first: a crash before the first commit leaves done=0, and a
            # resumed run then creates the .npy again instead of trusting a half-written header.
            self._save(0)
            self._array = np.lib.format.open_memmap(self.path, mode='w+', dtype=OUTPUT_DTYPE,
                                                    shape=(self.rows, self.width))
        elif vectors.shape[1] != self.width:
            raise ConfigError(f'the server returns vectors of width {vectors.shape[1]}, but {self.path} holds width '
                              f'{self.width}: is it the server (model, pooling) of the earlier run?')
        self._array[start:start + len(vectors)] = vectors

    def commit(self, done: int) -> None:
        """Records rows [0, done) as final: flushes them to disk, then replaces the progress file."""
        if self._array is None or done <= self.done:
            return
        self._array.flush()
        self._save(done)
        self.done = done

    def _save(self, done: int) -> None:
        _write_atomically(self.progress_path, json.dumps(
            {'version': PROGRESS_VERSION, 'done': done, 'rows': self.rows, 'width': self.width,
             'dtype': OUTPUT_DTYPE.name, 'input': self._input}, indent=1) + '\n')

    def close(self) -> None:
        """Lets go of the memory map (the file stays)."""
        if self._array is not None:
            self._array.flush()
            self._array = None
