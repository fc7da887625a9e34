"""Encode over HTTP, through the original /encode and the OpenAI-style /v1/embeddings.

Start a server with its HTTP proxy first, in another shell:

    make serve ARGS='-http_port 8125'          # or: bert-serving-start -http_port 8125

then run, from the repository root:

    .venv/bin/python examples/http_encode.py --http_port 8125

Only the standard library speaks HTTP here (urllib), as any language could. The script prints
the replies' shapes and token usage, and checks them against the vectors a BertClient gets
from the same server over ZeroMQ (--port/--port_out); ``--save http.npz`` keeps all three.
"""
from __future__ import annotations

import json
import sys
import urllib.request

import numpy as np

from bert_serving.client import BertClient

from cli import client_kwargs, example_parser
from corpus import sentences


def post_json(url: str, body: dict, timeout: float) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode('utf-8'), method='POST',
                                     headers={'Content-Type': 'application/json'})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def main():
    parser = example_parser(__doc__, num=8, num_help='sentences to encode')
    parser.add_argument('--http_port', type=int, default=8125,
                        help='the proxy port, bert-serving-start -http_port (default: %(default)s)')
    parser.add_argument('--save', metavar='FILE.npz', help='save the vectors of each route here')
    args = parser.parse_args()
    texts = sentences(args.num)
    base = f'http://{args.ip}:{args.http_port}'
    seconds = args.timeout / 1000

    # The 1.10 route: {"id", "texts"} in, {"id", "result"} out, one float list per text.
    reply = post_json(f'{base}/encode', {'id': 1, 'texts': texts}, seconds)
    from_encode = np.array(reply['result'], dtype=np.float32)
    print(f'POST /encode: id {reply["id"]}, result {from_encode.shape}')

    # The OpenAI route: {"input", "model"} in, {"data": [{"index", "embedding"}], "usage"} out.
    reply = post_json(f'{base}/v1/embeddings', {'input': texts, 'model': 'minilm'}, seconds)
    rows = sorted(reply['data'], key=lambda d: d['index'])
    from_embeddings = np.array([d['embedding'] for d in rows], dtype=np.float32)
    print(f'POST /v1/embeddings: {len(rows)} embeddings of width {from_embeddings.shape[1]}, '
          f'model {reply["model"]!r}, usage {reply["usage"]}')

    with BertClient(**client_kwargs(args)) as bc:
        from_zmq = bc.encode(texts)
    worst = max(float(np.abs(v - from_zmq).max()) for v in (from_encode, from_embeddings))
    print(f'largest difference from the ZeroMQ vectors: {worst:.2e}')
    if args.save:
        np.savez(args.save, encode=from_encode, embeddings=from_embeddings, zmq=from_zmq)
        print(f'saved encode, embeddings and zmq to {args.save}')
    if worst > 1e-5:
        sys.exit('the HTTP vectors differ from the ZeroMQ ones')


if __name__ == '__main__':
    main()
