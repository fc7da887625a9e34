"""The input of ``bert-serving-encode``: a corpus read record by record from a text file (one sentence
a line), a JSON Lines field or a CSV column, with each record's line number and id.

Input is read as bytes and decoded as UTF-8 line by line, so an error names the line it is on::

    line 17: not UTF-8 (byte 0xff at column 4); convert the file, e.g. `iconv -f latin1 -t utf-8`

Blank records (empty, or spaces only) are skipped: they carry no sentence, and the ids file still
maps every row of the output to its source line. A UTF-8 byte order mark before the first line is
dropped. Every error here is a :class:`~bert_serving.client.errors.BadRequest` whose message starts
with ``line N:`` (or names the file when it has no line to blame).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import reprlib
from dataclasses import dataclass
from typing import BinaryIO, Iterator, NamedTuple, Optional

from .errors import BadRequest

__all__ = ['InputSpec', 'Record', 'read_records', 'fingerprint']

# A fingerprint hashes this much of the file's start and of its end, besides its size and records.
FINGERPRINT_BYTES = 1 << 20


@dataclass(frozen=True)
class InputSpec:
    """Where the text of each record is, and what identifies it.

    Attributes:
        path: The input file.
        jsonl_field: Read JSON Lines: each line an object whose field of this name holds the text.
        csv_column: Read CSV with a header row: the text is in the column of this name.
        id_field: The JSONL field, or CSV column, holding each record's id; None numbers records
            by the line they start on (1-based).
        delimiter: The CSV field separator (``'\\t'`` for TSV).
        name: What messages call the input (``'<stdin>'`` for a copy of stdin); ``path`` by default.
    """
    path: str
    jsonl_field: Optional[str] = None
    csv_column: Optional[str] = None
    id_field: Optional[str] = None
    delimiter: str = ','
    name: Optional[str] = None

    def __post_init__(self):
        if self.jsonl_field is not None and self.csv_column is not None:
            raise BadRequest('give --jsonl-field or --csv-column, not both')
        if self.id_field is not None and self.jsonl_field is None and self.csv_column is None:
            raise BadRequest('an id field or column needs --jsonl-field or --csv-column; plain text lines are '
                             'identified by their line number')
        if len(self.delimiter) != 1:
            raise BadRequest(f'the CSV delimiter must be one character, got {self.delimiter!r}')

    @property
    def label(self) -> str:
        """The input's name in messages."""
        return self.name or self.path

    @property
    def kind(self) -> str:
        """'jsonl', 'csv' or 'text'."""
        return 'jsonl' if self.jsonl_field is not None else 'csv' if self.csv_column is not None else 'text'

    def describe(self) -> dict:
        """The options that decide which records a file yields (a resumed run must use the same)."""
        return {'kind': self.kind, 'jsonl_field': self.jsonl_field, 'csv_column': self.csv_column,
                'id_field': self.id_field, 'delimiter': self.delimiter}


class Record(NamedTuple):
    """One sentence to encode: the line it starts on (1-based), its id (str) and its text."""
    line: int
    id: str
    text: str


def _open(path: str, label: str) -> BinaryIO:
    try:
        return open(path, 'rb')
    except OSError as e:
        raise BadRequest(f'{label}: cannot read the input ({e.strerror or e})') from e


def _decoded_lines(stream: BinaryIO) -> Iterator[str]:
    """The file's lines as str, with their line break (the csv module reads quoted ones)."""
    for number, raw in enumerate(stream, 1):
        if number == 1 and raw.startswith(b'\xef\xbb\xbf'):
            raw = raw[3:]
        try:
            line = raw.decode('utf-8')
        except UnicodeDecodeError as e:
            raise BadRequest(f'line {number}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); '
                             'convert the file, e.g. `iconv -f latin1 -t utf-8 IN > OUT`') from None
        yield line


def _unbroken(lines: Iterator[str]) -> Iterator[str]:
    """``lines`` without their line break (``\\n`` or ``\\r\\n``)."""
    for line in lines:
        yield line[:-2] if line.endswith('\r\n') else line[:-1] if line.endswith('\n') else line


def _text(value, line: int, name: str, what: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f'line {line}: {what} {name!r} is {type(value).__name__} ({reprlib.repr(value)}), '
                         'expected a string')
    try:
        value.encode('utf-8')
    except UnicodeEncodeError:  # JSON's "\ud800": a lone surrogate is no text
        raise BadRequest(f'line {line}: {what} {name!r} holds a lone UTF-16 surrogate, which is no text') from None
    return value


def _record_id(value, line: int, name: str, what: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    value = _text(value, line, name, what)
    if not value or '\n' in value or '\r' in value:
        raise BadRequest(f'line {line}: {what} {name!r} is {value!r}: an id must be non-empty and on one line '
                         '(the ids file holds one per line)')
    return value


def _text_records(lines: Iterator[str]) -> Iterator[Record]:
    for number, line in enumerate(lines, 1):
        if line.strip():
            yield Record(number, str(number), line)


def _jsonl_records(lines: Iterator[str], spec: InputSpec) -> Iterator[Record]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise BadRequest(f'line {number}: invalid JSON ({e})') from None
        if not isinstance(obj, dict):
            raise BadRequest(f'line {number}: a JSON {type(obj).__name__}, expected an object with a '
                             f'{spec.jsonl_field!r} field')
        for name in (spec.jsonl_field, spec.id_field):
            if name is not None and name not in obj:
                raise BadRequest(f'line {number}: no field {name!r} (fields: {", ".join(map(repr, obj)) or "none"})')
        text = _text(obj[spec.jsonl_field], number, spec.jsonl_field, 'field')
        if text.strip():
            rid = str(number) if spec.id_field is None else _record_id(obj[spec.id_field], number, spec.id_field,
                                                                       'field')
            yield Record(number, rid, text)


def _csv_records(lines: Iterator[str], spec: InputSpec) -> Iterator[Record]:
    reader = csv.reader(lines, delimiter=spec.delimiter, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise BadRequest(f'{spec.label}: the file is empty; a CSV input needs a header row naming its columns')
        columns = {}
        for i, name in enumerate(header):
            columns.setdefault(name, i)
        for name in (spec.csv_column, spec.id_field):
            if name is not None and name not in columns:
                raise BadRequest(f'line 1: no column {name!r} in the header (columns: '
                                 f'{", ".join(map(repr, header))}); is the delimiter {spec.delimiter!r} right?')
        text_at = columns[spec.csv_column]
        id_at = None if spec.id_field is None else columns[spec.id_field]
        start = reader.line_num + 1  # a quoted field may span lines: a record starts after the last one
        for row in reader:
            number, start = start, reader.line_num + 1
            if not row:
                continue
            if len(row) < len(header):
                raise BadRequest(f'line {number}: {len(row)} fields, the header has {len(header)}')
            if row[text_at].strip():
                rid = str(number) if id_at is None else _record_id(row[id_at], number, spec.id_field, 'column')
                yield Record(number, rid, row[text_at])
    except csv.Error as e:
        raise BadRequest(f'line {reader.line_num}: malformed CSV ({e})') from None


def read_records(spec: InputSpec) -> Iterator[Record]:
    """Yields the file's non-blank records in order.

    Raises:
        BadRequest: at the first bad line (not UTF-8, invalid JSON, a missing field or column, a
            text that is not a string, an id that is empty or spans lines), or the file cannot be
            read; the message starts with ``line N:`` or the file's path.
    """
    with _open(spec.path, spec.label) as stream:
        lines = _decoded_lines(stream)
        if spec.kind == 'jsonl':
            yield from _jsonl_records(_unbroken(lines), spec)
        elif spec.kind == 'csv':
            yield from _csv_records(lines, spec)
        else:
            yield from _text_records(_unbroken(lines))


def fingerprint(path: str) -> dict:
    """What tells this file from another, cheaply: its size and the SHA-256 of its first and last
    ``FINGERPRINT_BYTES``. Content only, not names or times: the same bytes piped in again match."""
    digest = hashlib.sha256()
    size = os.path.getsize(path)
    with _open(path, path) as stream:
        digest.update(stream.read(FINGERPRINT_BYTES))
        if size > FINGERPRINT_BYTES:
            stream.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
            digest.update(stream.read())
    return {'size': size, 'sha256_head_tail': digest.hexdigest()}
