"""Encode a few sentences, then time the encoding of many at several request sizes.

Start a server first, in another shell:

    make serve                      # or: bert-serving-start

then run, from the repository root:

    .venv/bin/python examples/encode.py --num 2000 --batch_sizes 1 16 256 2000

It prints the shape of the vectors and the cosine similarity of one sentence with another of its
topic and with one of each other topic. Then, for each request size, it prints how many sentences
per second the server encoded. ``--save vectors.npy`` keeps the vectors of the ``--num`` sentences.
"""
from __future__ import annotations

import time

import numpy as np

from bert_serving.client import BertClient

from cli import client_kwargs, example_parser
from corpus import sentences, topics


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two float vectors [D]."""
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def timed_encode(bc: BertClient, texts: list, batch_size: int) -> float:
    """Encodes ``texts`` in requests of ``batch_size`` sentences; returns sentences per second."""
    start = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        bc.encode(texts[i:i + batch_size])
    return len(texts) / (time.perf_counter() - start)


def main():
    parser = example_parser(__doc__, num=1000, num_help='sentences to encode in the timed runs')
    parser.add_argument('--batch_sizes', type=int, nargs='+', default=[1, 16, 256],
                        help='request sizes to time: sentences per encode() call (default: %(default)s)')
    parser.add_argument('--save', metavar='FILE.npy', help='save the vectors of the --num sentences here')
    args = parser.parse_args()
    texts = sentences(args.num)

    with BertClient(**client_kwargs(args)) as bc:
        # 1. Plain encode: a list of sentences in, a float32 array [B, D] out, row i for texts[i].
        # One sentence of each topic, and a second one of the first topic.
        (a, b, *_), _ = topics(2)
        first = [a, b, *topics(1)[0][1:]]
        vecs = bc.encode(first)
        print(f'encoded {len(first)} sentences: shape {vecs.shape}, dtype {vecs.dtype}')
        for i in range(1, len(first)):
            print(f'  cosine {cosine(vecs[0], vecs[i]):.3f}: {first[0]!r} ~ {first[i]!r}')

        # 2. Timed encode: the same sentences sent in requests of different sizes. Small requests
        # pay the round trip each time; big ones let the server fill its batches.
        print(f'encoding {len(texts)} sentences (server max_seq_len={bc.server_config["max_seq_len"]}):')
        for batch_size in args.batch_sizes:
            speed = timed_encode(bc, texts, batch_size)
            print(f'  {batch_size:>6} sentences per request: {speed:8.1f} sentences/s')

        if args.save:
            everything = bc.encode(texts)
            np.save(args.save, everything)
            print(f'saved {everything.shape[0]} vectors of width {everything.shape[1]} to {args.save}')


if __name__ == '__main__':
    main()
