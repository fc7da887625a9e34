"""``bert-serving-encode``: embeds a whole corpus through a running server into a float32 ``.npy``,
resuming where an interrupted run stopped.

    bert-serving-encode corpus.txt vectors.npy -ip HOST          one sentence a line
    bert-serving-encode docs.jsonl vectors.npy --jsonl-field text --id-field doc_id
    bert-serving-encode table.csv vectors.npy --csv-column body --id-column id
    cat corpus.txt | bert-serving-encode - vectors.npy

It reads the input twice: a first pass checks every record and writes the ids file (so a bad line
fails before anything is sent, and N is known for the memory map), a second streams the records to
the server in batches, keeping ``in_flight`` requests at the server. Connects as one
:class:`~bert_serving.client.BertClient` (PUSH to ``-port``, SUB from ``-port_out``).
``checkpoint.py`` describes the output files and why a resumed run is exact; ``corpus.py`` the input.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from typing import Iterator, List, NamedTuple, Optional, Tuple

import numpy as np

from .checkpoint import Output
from .client import BertClient
from .corpus import InputSpec, fingerprint, read_records
from .errors import BadRequest, BertServingError, ConfigError, KeyFileError

__all__ = ['encode_file', 'EncodeSummary', 'EncodeInterrupted', 'get_parser', 'main']

# Sentences per request. The server sorts a request by length before cutting it into batches of
# -max_batch_size (256 by default), so one request of four batches pads less and makes fewer model
# calls than four requests of one batch each. Replaying the worker's cuts on make bench's 4,096
# sentences: requests of 256 make 283 model calls and pad 6.4% more tokens than the sentences hold,
# requests of 1,024 make 134 calls and pad 3.3%, and one call of all 4,096 makes 61 and pads 1.6%.
BATCH_SIZE = 1024
# Requests at the server at once: while it computes one, the next is queued, so the server never
# waits for this process. More only matters for a server with many workers.
IN_FLIGHT = 2
# The progress file is replaced at most this often (and at the end): a crash re-encodes at most
# this much work, and each commit costs an msync and an fsync.
COMMIT_SECONDS = 0.5
STATUS_SECONDS = 0.2  # the plain status line is redrawn at most this often


class EncodeSummary(NamedTuple):
    """What a run of :func:`encode_file` did.

    Attributes:
        output, ids: The ``.npy`` (float32 [rows, width]) and the ids file.
        rows, width: The output's shape.
        start: Rows already done by earlier runs when this one began.
        encoded: Rows this run sent to the server (``rows - start`` unless interrupted).
        seconds: This run's time, the first pass included.
    """
    output: str
    ids: str
    rows: int
    width: int
    start: int
    encoded: int
    seconds: float


class EncodeInterrupted(BertServingError, KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped the run; rows [0, done) of ``rows`` are saved, and the same
    command resumes from there. A KeyboardInterrupt, so that code which stops on Ctrl-C stops on it."""

    def __init__(self, done: int, rows: int):
        super().__init__(done, rows)
        self.done, self.rows = done, rows


class _Status:
    """Rows done, sentences/s and ETA on stderr: tqdm's bar where tqdm is installed, else one line
    redrawn in place."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.total, self.done, self.enabled = total, initial, enabled
        self._initial, self._started, self._drawn = initial, time.monotonic(), 0.0
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self._bar = tqdm(total=total, initial=initial, unit=' sentences', unit_scale=True, file=sys.stderr,
                             dynamic_ncols=True, smoothing=0.1)

    def update(self, rows: int) -> None:
        self.done += rows
        if self._bar is not None:
            self._bar.update(rows)
        elif self.enabled and time.monotonic() - self._drawn >= STATUS_SECONDS:
            self._draw()

    def _draw(self) -> None:
        self._drawn = time.monotonic()
        rate = (self.done - self._initial) / max(self._drawn - self._started, 1e-9)
        eta = time.strftime('%H:%M:%S', time.gmtime((self.total - self.done) / rate)) if rate > 0 else '--:--:--'
        sys.stderr.write(f'\r{self.done:,}/{self.total:,} sentences ({100 * self.done / self.total:.0f}%), '
                         f'{rate:,.0f} sentences/s, ETA {eta} ')
        sys.stderr.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            self._draw()
            sys.stderr.write('\n')


def _scan(spec: InputSpec, ids_file) -> int:
    """The first pass: checks every record, writes its id a line, returns how many there are."""
    rows = 0
    for record in read_records(spec):
        ids_file.write(record.id + '\n')
        rows += 1
    if not rows:
        raise BadRequest(f'{spec.label}: no sentences to encode (the file is empty, or holds only blank records)')
    return rows


def _batches(spec: InputSpec, start: int, size: int) -> Iterator[Tuple[int, List[str]]]:
    """(first row, texts) for rows [start, N), ``size`` at a time."""
    batch: List[str] = []
    row = start
    for i, record in enumerate(read_records(spec)):
        if i < start:
            continue
        batch.append(record.text)
        if len(batch) == size:
            yield row, batch
            row, batch = row + size, []
    if batch:
        yield row, batch


def _pipelined(bc: BertClient, batches, in_flight: int) -> Iterator[Tuple[int, np.ndarray]]:
    """(first row, vectors [B, D]) per batch, in the order the replies come, with up to
    ``in_flight`` requests at the server so that it never waits for this process."""
    window = {}  # request id -> first row
    for start, texts in batches:
        bc.encode(texts, blocking=False)
        window[bc.request_id] = start
        while len(window) >= in_flight:
            reply = next(bc.fetch())
            yield window.pop(reply.id), np.asarray(reply.embedding)
    while window:
        reply = next(bc.fetch())
        yield window.pop(reply.id), np.asarray(reply.embedding)


def encode_file(spec: InputSpec, output: str, client_kwargs: Optional[dict] = None, *, ids_path: Optional[str] = None,
                batch_size: int = BATCH_SIZE, in_flight: int = IN_FLIGHT, progress: bool = False,
                overwrite: bool = False) -> EncodeSummary:
    """Encodes every record of ``spec`` into ``output`` (float32 [N, D] ``.npy``), going on from
    where an earlier run on the same input stopped.

    Args:
        spec: The input and how to read it.
        output: The ``.npy`` to fill; its ids file and progress file go beside it.
        client_kwargs: Keyword arguments of :class:`BertClient` (``ip``, ``port``, ``timeout``, keys...).
        ids_path: The ids file; ``<output stem>.ids.txt`` by default.
        batch_size: Sentences per request.
        in_flight: Requests kept at the server at once.
        progress: Show progress on stderr.
        overwrite: Start from row 0 whatever the output holds.

    Returns:
        An :class:`EncodeSummary`.

    Raises:
        BadRequest: A bad record (the message names its line) or an empty input.
        ConfigError: The output cannot be resumed (the message says why), or bad sizes.
        EncodeInterrupted: Ctrl-C; what is done is saved.
        BertServingError: The server or the connection failed; what is done is saved.
    """
    if batch_size < 1 or in_flight < 1:
        raise ConfigError(f'batch size and in-flight requests must be >= 1, got {batch_size} and {in_flight}')
    started = time.monotonic()
    out = Output(output, ids_path)
    ids_tmp = out.ids_path + '.tmp'
    try:
        with open(ids_tmp, 'w', encoding='utf-8') as ids:
            rows = _scan(spec, ids)
        start = out.start({**fingerprint(spec.path), **spec.describe(), 'records': rows}, rows, overwrite)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ids_tmp)
        raise
    out.write_ids(ids_tmp)
    frontier, finished, encoded = start, {}, 0
    status = _Status(rows, start, progress)
    try:
        if start < rows:
            with BertClient(**(client_kwargs or {})) as bc:
                last_commit = float('-inf')
                for first, vectors in _pipelined(bc, _batches(spec, start, batch_size), in_flight):
                    out.write(first, vectors)
                    encoded += len(vectors)
                    status.update(len(vectors))
                    finished[first] = first + len(vectors)
                    while frontier in finished:  # replies may come out of order: count only a gapless prefix
                        frontier = finished.pop(frontier)
                    if time.monotonic() - last_commit >= COMMIT_SECONDS:
                        out.commit(frontier)
                        last_commit = time.monotonic()
            out.commit(frontier)
    except KeyboardInterrupt:
        out.commit(frontier)
        raise EncodeInterrupted(out.done, rows) from None
    except BaseException:
        out.commit(frontier)
        raise
    finally:
        status.close()
        out.close()
    return EncodeSummary(output, out.ids_path, rows, out.width, start, encoded, time.monotonic() - started)


def get_parser() -> argparse.ArgumentParser:
    """The parser of ``bert-serving-encode``."""
    parser = argparse.ArgumentParser(
        prog='bert-serving-encode',
        description='Encode a corpus with a running bert-serving server into a float32 .npy [N, D] (row i for '
                    'record i) and an ids file. Run the same command again after Ctrl-C or a crash: it goes on '
                    'where the last run stopped.')
    parser.add_argument('input', help='text file with one sentence a line (blank lines are skipped), a JSONL or '
                                      'CSV file (see below), or - for stdin')
    parser.add_argument('output', help='the .npy to write; OUTPUT.ids.txt and OUTPUT.progress.json go beside it')
    source = parser.add_argument_group('input', 'the format of INPUT (default: one sentence a line)')
    source.add_argument('--jsonl-field', metavar='NAME', help='INPUT is JSON Lines; encode this field of each object')
    source.add_argument('--csv-column', metavar='NAME', help='INPUT is CSV with a header; encode this column')
    source.add_argument('--csv-delimiter', default=',', metavar='CHAR', help='the CSV separator; \'\\t\' for TSV')
    source.add_argument('--id-field', '--id-column', dest='id_field', metavar='NAME',
                        help='the field or column with each record\'s id (default: the line number)')
    run = parser.add_argument_group('run')
    run.add_argument('--ids', metavar='PATH', help='the ids file, one id a line (default: OUTPUT stem + .ids.txt)')
    run.add_argument('--batch-size', type=int, default=BATCH_SIZE,
                     help='sentences per request; the server sorts each request by length, so larger ones pad '
                          'less. Lower it for very long records (a request is limited to the server\'s '
                          '-max_request_bytes) or a model so slow that one request takes longer than -timeout '
                          '(default: %(default)s)')
    run.add_argument('--in-flight', type=int, default=IN_FLIGHT,
                     help='requests at the server at once; raise it for a server with many workers '
                          '(default: %(default)s)')
    run.add_argument('--overwrite', action='store_true', help='start over, whatever OUTPUT holds')
    run.add_argument('--progress', action=argparse.BooleanOptionalAction, default=None,
                     help='show sentences/s and ETA on stderr (default: only when stderr is a terminal)')
    server = parser.add_argument_group('server', 'where the bert-serving server is, as for BertClient')
    server.add_argument('-ip', default='localhost', help='address of the server (default: %(default)s)')
    server.add_argument('-port', type=int, default=5555, help='its -port (default: %(default)s)')
    server.add_argument('-port_out', type=int, default=5556, help='its -port_out (default: %(default)s)')
    server.add_argument('-timeout', type=int, default=60000,
                        help='milliseconds to wait for each reply; -1 waits forever (default: %(default)s)')
    server.add_argument('-server_key', help='for a server started with -auth_dir: its public server.key '
                                            '(default $BERT_SERVING_SERVER_KEY)')
    server.add_argument('-client_key', help='with -server_key: your NAME.key_secret, whose NAME.key is in the '
                                            'server\'s authorized/ (default $BERT_SERVING_CLIENT_KEY)')
    return parser


@contextlib.contextmanager
def _input_path(name: str, directory: str) -> Iterator[str]:
    """``name``, or for ``-`` a copy of stdin (in ``directory``, removed after): the input is read
    twice, and a resumed run must see the same bytes again."""
    if name != '-':
        yield name
        return
    with tempfile.NamedTemporaryFile('wb', dir=directory, prefix='.stdin-', delete=False) as spool:
        try:
            shutil.copyfileobj(sys.stdin.buffer, spool)
        except BaseException:
            spool.close()
            os.unlink(spool.name)
            raise
    try:
        yield spool.name
    finally:
        os.unlink(spool.name)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: Optional[List[str]] = None) -> int:
    """``bert-serving-encode``. Returns 0 when done, 2 for bad input or an output that cannot be
    resumed, 1 when the server or the connection fails, 130 when interrupted (resumable)."""
    args = get_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill` and `timeout` save progress too
    # Ctrl-C saves progress even where the command starts with SIGINT ignored, as a shell starts a
    # script's background jobs (`bert-serving-encode ... &`): Python keeps an inherited SIG_IGN.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    client_kwargs = dict(ip=args.ip, port=args.port, port_out=args.port_out, timeout=args.timeout,
                         server_key=args.server_key, client_key=args.client_key)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        with _input_path(args.input, os.path.dirname(os.path.abspath(args.output))) as path:
            spec = InputSpec(path, args.jsonl_field, args.csv_column, args.id_field,
                             args.csv_delimiter.replace('\\t', '\t'), name='<stdin>' if args.input == '-' else None)
            summary = encode_file(spec, args.output, client_kwargs, ids_path=args.ids, batch_size=args.batch_size,
                                  in_flight=args.in_flight, progress=progress, overwrite=args.overwrite)
    except EncodeInterrupted as e:
        print(f'bert-serving-encode: interrupted; {e.done} of {e.rows} rows are saved in {args.output}: run the same '
              'command again to go on', file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print('bert-serving-encode: interrupted before encoding began', file=sys.stderr)
        return 130
    except (BadRequest, ConfigError, KeyFileError) as e:
        print(f'bert-serving-encode: {e}', file=sys.stderr)
        return 2
    except (BertServingError, OSError) as e:
        print(f'bert-serving-encode: {e}; what was done is saved, run the same command again to go on',
              file=sys.stderr)
        return 1
    s = summary
    rate = s.encoded / s.seconds if s.seconds > 0 else 0.0
    print(f'bert-serving-encode: {s.rows} rows of width {s.width} in {s.output}, ids in {s.ids}; encoded {s.encoded} '
          f'rows this run from row {s.start}, in {s.seconds:.1f} s ({rate:.0f} sentences/s)', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
