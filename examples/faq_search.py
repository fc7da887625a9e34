"""Search an FAQ by meaning: type a question, get the most similar FAQ questions and their answers.

Start a server first, in another shell:

    make serve                      # or: bert-serving-start

then run, from the repository root, and type questions (Ctrl-D ends):

    .venv/bin/python examples/faq_search.py --topk 3

Questions are read from standard input, one per line, so they can also be piped in:

    echo 'how can I shut the server down' | .venv/bin/python examples/faq_search.py

The FAQ (examples/data/faq.tsv, or --faq FILE with question<TAB>answer lines) is encoded once.
Each query is encoded and compared with every FAQ question by cosine similarity; the best
--topk are printed with their scores. The scores are only good for ranking: even unrelated
sentences score well above zero, so no fixed threshold tells a match from a miss.
"""
from __future__ import annotations

import sys

import numpy as np

from bert_serving.client import BertClient

from cli import client_kwargs, example_parser
from corpus import DATA_DIR, faq


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """float32 [N, D] scaled so that each row has length 1: dot products become cosines."""
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def main():
    parser = example_parser(__doc__, num=0, num_help='use only the first NUM FAQ entries; 0 uses all')
    parser.add_argument('--faq', default=str(DATA_DIR / 'faq.tsv'),
                        help='question<TAB>answer file (default: %(default)s)')
    parser.add_argument('--topk', type=int, default=3, help='answers to show per query (default: %(default)s)')
    args = parser.parse_args()
    questions, answers = faq(args.faq)
    if args.num > 0:
        questions, answers = questions[:args.num], answers[:args.num]
    interactive = sys.stdin.isatty()

    with BertClient(**client_kwargs(args)) as bc:
        faq_vectors = unit_rows(bc.encode(questions))  # [Q, D]
        print(f'{len(questions)} FAQ questions loaded and encoded; '
              f'{"type a question (Ctrl-D ends)" if interactive else "reading questions from stdin"}')
        while True:
            if interactive:
                print('your question: ', end='', flush=True)
            line = sys.stdin.readline()
            if not line:
                break
            query = line.strip()
            if not query:
                continue
            scores = faq_vectors @ unit_rows(bc.encode([query]))[0]  # [Q] cosines
            print(f'top {min(args.topk, len(questions))} for "{query}":')
            for rank, i in enumerate(np.argsort(-scores)[:args.topk], 1):
                print(f'  {rank}. [{scores[i]:.3f}] {questions[i]}')
                print(f'     {answers[i]}')


if __name__ == '__main__':
    main()
