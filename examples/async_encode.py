"""Encode without waiting: encode(blocking=False) with fetch() and fetch_all(), and encode_async().

Start a server first, in another shell:

    make serve                      # or: bert-serving-start

then run, from the repository root:

    .venv/bin/python examples/async_encode.py --num 2000 --batch_size 64

The sentences are cut into requests of ``--batch_size``. They are encoded four ways: one blocking
encode() per request, then all requests sent at once and collected with fetch_all(), then with
fetch(), then streamed through encode_async(). The script prints how long each way took and
checks that all four give the same vectors; ``--save results.npz`` keeps them.
"""
from __future__ import annotations

import itertools
import sys
import time

import numpy as np

from bert_serving.client import BertClient

from cli import client_kwargs, example_parser
from corpus import sentences


def in_batches(texts: list, batch_size: int) -> list:
    return [texts[i:i + batch_size] for i in range(0, len(texts), batch_size)]


def with_fetch_all(bc: BertClient, batches: list) -> np.ndarray:
    """Sends every batch without waiting, then collects them all: float32 [N, D] in sending order."""
    for batch in batches:
        bc.encode(batch, blocking=False)  # returns None at once; the request is now pending
    # sort=True orders the results by request id, i.e. as sent; concat=True joins them into one array.
    return bc.fetch_all(sort=True, concat=True)


def with_fetch(bc: BertClient, batches: list) -> np.ndarray:
    """As with_fetch_all, but takes each result as it arrives, which may be out of order."""
    first_id = bc.request_id + 1
    for batch in batches:
        bc.encode(batch, blocking=False)
    by_id = {}
    for response in bc.fetch():
        by_id[response.id] = response.embedding  # ids count up from first_id in sending order
    return np.concatenate([by_id[first_id + i] for i in range(len(batches))])


def with_encode_async(bc: BertClient, texts: list, batch_size: int) -> np.ndarray:
    """Streams batches from an endless generator; max_num_batch says when to stop."""
    def endless_batches():
        for start in itertools.count(0, batch_size):
            yield [texts[(start + k) % len(texts)] for k in range(batch_size)]

    num_batches = -(-len(texts) // batch_size)
    first_id = bc.request_id + 1
    by_id = {r.id: r.embedding for r in bc.encode_async(endless_batches(), max_num_batch=num_batches)}
    # The generator wraps around, so the last batch may be longer than the rest of texts: trim it.
    return np.concatenate([by_id[first_id + i] for i in range(num_batches)])[:len(texts)]


def main():
    parser = example_parser(__doc__, num=1000, num_help='sentences to encode')
    parser.add_argument('--batch_size', type=int, default=64, help='sentences per request (default: %(default)s)')
    parser.add_argument('--save', metavar='FILE.npz', help='save the vectors of each way here, one key each')
    args = parser.parse_args()
    texts = sentences(args.num)
    batches = in_batches(texts, args.batch_size)

    results = {}
    with BertClient(**client_kwargs(args)) as bc:
        ways = [('blocking', lambda: np.concatenate([bc.encode(b) for b in batches])),
                ('fetch_all', lambda: with_fetch_all(bc, batches)),
                ('fetch', lambda: with_fetch(bc, batches)),
                ('encode_async', lambda: with_encode_async(bc, texts, args.batch_size))]
        print(f'{len(texts)} sentences in {len(batches)} requests of up to {args.batch_size}:')
        for name, run in ways:
            start = time.perf_counter()
            results[name] = run()
            seconds = time.perf_counter() - start
            print(f'  {name:>12}: {results[name].shape} in {seconds:.2f} s ({len(texts) / seconds:.0f} sentences/s)')

    worst = max(float(np.abs(results[name] - results['blocking']).max()) for name in results)
    print(f'largest difference from the blocking vectors: {worst:.2e}')
    if args.save:
        np.savez(args.save, **results)
        print(f'saved {", ".join(results)} to {args.save}')
    if worst > 1e-4:
        sys.exit('the asynchronous results differ from the blocking ones')


if __name__ == '__main__':
    main()
