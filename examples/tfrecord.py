"""Write sentence vectors to a TFRecord file, then read it back as a tf.data pipeline.

Start a server first, in another shell:

    make serve                      # or: bert-serving-start

then run, from the repository root:

    .venv/bin/python examples/tfrecord.py --num 80 --output vectors.tfrecord

Each record is a tf.train.Example with three features: ``vector`` (float list [D]), ``label``
(int64, the topic's index) and ``text`` (bytes). Encode once, train many times: a training job
reads the file without a server. The script reads the file back, checks that every vector
survived the round trip and prints a batch of the parsed dataset.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TensorFlow is imported: no C++ start-up chatter

import numpy as np
import tensorflow as tf

from bert_serving.client import BertClient

from cli import client_kwargs, example_parser
from corpus import topics


def to_example(vector: np.ndarray, label: int, text: str) -> tf.train.Example:
    """One record: ``vector`` float32 [D], ``label`` int64 and ``text`` UTF-8 bytes."""
    return tf.train.Example(features=tf.train.Features(feature={
        'vector': tf.train.Feature(float_list=tf.train.FloatList(value=vector)),
        'label': tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        'text': tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode('utf-8')])),
    }))


def read_dataset(path: str, width: int) -> tf.data.Dataset:
    """The records of ``path`` as dicts: vector float32 [width], label int64 [], text string []."""
    spec = {'vector': tf.io.FixedLenFeature([width], tf.float32),
            'label': tf.io.FixedLenFeature([], tf.int64),
            'text': tf.io.FixedLenFeature([], tf.string)}
    return tf.data.TFRecordDataset(path).map(lambda record: tf.io.parse_single_example(record, spec))


def main():
    parser = example_parser(__doc__, num=20, num_help='sentences per topic to write (topics.tsv has 20)')
    parser.add_argument('--output', default='vectors.tfrecord',
                        help='the TFRecord file to write (default: %(default)s)')
    args = parser.parse_args()
    texts, labels = topics(args.num)
    classes = sorted(set(labels))

    with BertClient(**client_kwargs(args)) as bc:
        vectors = bc.encode(texts)  # float32 [N, D]
    with tf.io.TFRecordWriter(args.output) as writer:
        for vector, label, text in zip(vectors, labels, texts):
            writer.write(to_example(vector, classes.index(label), text).SerializeToString())
    print(f'wrote {len(texts)} records of width {vectors.shape[1]} to {args.output} '
          f'({os.path.getsize(args.output)} bytes)')

    # Read it back: a training job would add .shuffle(...).batch(...).repeat() here.
    dataset = read_dataset(args.output, vectors.shape[1])
    back = list(dataset.as_numpy_iterator())
    read_vectors = np.stack([r['vector'] for r in back])
    same_texts = [r['text'].decode('utf-8') for r in back] == texts
    same_vectors = read_vectors.shape == vectors.shape and np.array_equal(read_vectors, vectors)
    print(f'read back {len(back)} records: texts {"match" if same_texts else "DIFFER"}, '
          f'vectors {"match exactly" if same_vectors else "DIFFER"}')

    first = next(iter(dataset.batch(4)))
    print(f'a batch of the parsed dataset: vector {first["vector"].shape}, labels {first["label"].numpy().tolist()}, '
          f'texts {[t.decode("utf-8") for t in first["text"].numpy()]}')
    if not (same_texts and same_vectors):
        sys.exit('the records read back differ from what was written')


if __name__ == '__main__':
    main()
