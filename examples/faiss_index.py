"""Index a corpus with faiss and search it by cosine similarity: bert-serving-encode, then IndexFlatIP.

Start a server first, in another shell:

    make serve                      # or: bert-serving-start

then run, from the repository root (faiss-cpu comes with `make install`, the server's `examples` extra):

    .venv/bin/python examples/faiss_index.py --corpus my_corpus.txt --query 'how do I stop it'

The corpus (--corpus FILE, one sentence a line; by default the sentences of examples/data/topics.tsv)
is encoded with bert-serving-encode's Python function into WORKDIR/vectors.npy and its ids file:
run the script again after a Ctrl-C and it goes on where it stopped. The same, from a shell:

    bert-serving-encode my_corpus.txt WORKDIR/vectors.npy

The vectors are scaled to length 1, so the inner product of IndexFlatIP is the cosine; the index is
exact (no training, no approximation) and is saved as WORKDIR/index.faiss. Each --query (or each
line of stdin, without --query) is encoded and answered with the --topk most similar sentences.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import faiss
import numpy as np

from bert_serving.client import BertClient
from bert_serving.client.corpus import InputSpec, read_records
from bert_serving.client.encode_cli import encode_file

from cli import client_kwargs, example_parser
from corpus import sentences


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """float32 [N, D], a C-contiguous copy scaled so that each row has length 1."""
    vectors = np.array(vectors, dtype=np.float32, order='C')
    faiss.normalize_L2(vectors)  # in place
    return vectors


def main():
    parser = example_parser(__doc__, num=80, num_help='without --corpus, index this many sample sentences')
    parser.add_argument('--corpus', help='text file to index, one sentence a line (blank lines are skipped)')
    parser.add_argument('--workdir', help='where vectors.npy, vectors.ids.txt and index.faiss go (default: a '
                                          'temporary folder, removed at the end)')
    parser.add_argument('--query', action='append', help='a query; repeat for more (default: read stdin)')
    parser.add_argument('--topk', type=int, default=3, help='results per query (default: %(default)s)')
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(args.workdir or scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        corpus = Path(args.corpus) if args.corpus else workdir / 'corpus.txt'
        if not args.corpus:
            corpus.write_text(''.join(s + '\n' for s in sentences(args.num)), encoding='utf-8')
        spec = InputSpec(str(corpus))
        summary = encode_file(spec, str(workdir / 'vectors.npy'), client_kwargs(args))
        print(f'encoded {summary.rows} sentences of {corpus} ({summary.encoded} in this run) into '
              f'{summary.output}: width {summary.width}')
        # Row i of vectors.npy is record i of the corpus, as bert-serving-encode read it: blank lines
        # are skipped, and the ids file names each row's line.
        records = list(read_records(spec))

        index = faiss.IndexFlatIP(summary.width)
        index.add(unit_rows(np.load(summary.output, mmap_mode='r')))
        faiss.write_index(index, str(workdir / 'index.faiss'))
        print(f'index: {index.ntotal} vectors, inner product of unit vectors = cosine')

        queries = args.query or [q.strip() for q in sys.stdin if q.strip()]
        with BertClient(**client_kwargs(args)) as bc:
            scores, rows = index.search(unit_rows(bc.encode(queries)), min(args.topk, index.ntotal))  # [Q, k] each
        for query, row_scores, row_ids in zip(queries, scores, rows):
            print(f'top {len(row_ids)} for "{query}":')
            for rank, (score, row) in enumerate(zip(row_scores, row_ids), 1):
                print(f'  {rank}. [{score:.4f}] line {records[row].line}: {records[row].text}')


if __name__ == '__main__':
    main()
