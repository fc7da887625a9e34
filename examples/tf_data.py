"""Feed a tf.data pipeline with vectors from the server, several batches in flight at once.

Start a server first, in another shell:

    make serve ARGS='-num_worker 2'          # or: bert-serving-start -num_worker 2

then run, from the repository root:

    .venv/bin/python examples/tf_data.py --num 5000 --batch_size 128 --num_parallel_calls 4

``dataset.map(..., num_parallel_calls=k)`` calls the encoding function from k threads at once. A
BertClient must stay in one thread, so the function uses a ConcurrentBertClient: a pool of clients
that threads share. The pool needs at least k clients, or threads wait for one. The script prints
how fast the pipeline delivers vectors; ``--save vectors.npy`` keeps them, in input order.
"""
from __future__ import annotations

import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TensorFlow is imported: no C++ start-up chatter

import numpy as np
import tensorflow as tf

from bert_serving.client import ConcurrentBertClient

from cli import client_kwargs, example_parser
from corpus import sentences


def vector_dataset(pool: ConcurrentBertClient, texts: list, batch_size: int,
                   num_parallel_calls: int) -> tf.data.Dataset:
    """A dataset of ``(text batch, vector batch)``: tf.string [B] and tf.float32 [B, D].

    tf.data hands ``encode_batch`` a numpy array of bytes; it returns the server's float32 [B, D].
    """
    width = pool.server_config['output_dim']

    def encode_batch(batch: np.ndarray) -> np.ndarray:
        return pool.encode([t.decode('utf-8') for t in batch])

    def add_vectors(batch):
        vectors = tf.numpy_function(encode_batch, [batch], tf.float32, name='bert_client')
        vectors.set_shape([None, width])  # numpy_function loses the static shape; Keras wants it
        return batch, vectors

    return (tf.data.Dataset.from_tensor_slices(texts)
            .batch(batch_size)
            # Order is kept (deterministic=True by default) although batches finish out of order.
            .map(add_vectors, num_parallel_calls=num_parallel_calls)
            .prefetch(tf.data.AUTOTUNE))


def main():
    parser = example_parser(__doc__, num=2000, num_help='sentences to send through the pipeline')
    parser.add_argument('--batch_size', type=int, default=64, help='sentences per request (default: %(default)s)')
    parser.add_argument('--num_parallel_calls', type=int, default=4,
                        help='requests in flight at once: threads of dataset.map (default: %(default)s)')
    parser.add_argument('--save', metavar='FILE.npy', help='save the vectors here, in input order')
    args = parser.parse_args()
    texts = sentences(args.num)

    with ConcurrentBertClient(max_concurrency=args.num_parallel_calls, **client_kwargs(args)) as pool:
        dataset = vector_dataset(pool, texts, args.batch_size, args.num_parallel_calls)
        print(f'element spec: {dataset.element_spec}')
        start, received, chunks = time.perf_counter(), 0, []
        for batch, vectors in dataset:
            received += int(vectors.shape[0])
            chunks.append(vectors.numpy())
        seconds = time.perf_counter() - start

    everything = np.concatenate(chunks)
    print(f'the pipeline delivered {received} vectors of width {everything.shape[1]} in {len(chunks)} batches, '
          f'{seconds:.2f} s ({received / seconds:.0f} sentences/s)')
    if args.save:
        np.save(args.save, everything)
        print(f'saved them to {args.save}')


if __name__ == '__main__':
    main()
