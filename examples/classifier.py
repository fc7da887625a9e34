"""Train a small Keras classifier on sentence vectors and test it on held-out sentences.

Start a server first, in another shell:

    make serve                      # or: bert-serving-start

then run, from the repository root:

    .venv/bin/python examples/classifier.py --epochs 40

The sentences of examples/data/topics.tsv (four topics) are split into a training and a held-out
part, in the same proportion for every topic. The server encodes them once; the vectors are the
features of a one-hidden-layer network. The script prints the held-out accuracy next to chance,
and a few held-out sentences with their predicted topics. ``--report report.json`` saves the figures.
"""
from __future__ import annotations

import json
import os
import random

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TensorFlow is imported: no C++ start-up chatter

import numpy as np
import tensorflow as tf

from bert_serving.client import BertClient

from cli import client_kwargs, example_parser
from corpus import topics


def split(labels: list, held_out: float, seed: int):
    """Indices ``(train, test)``: in each label, a ``held_out`` share (at least one) goes to test."""
    rng = random.Random(seed)
    train, test = [], []
    for label in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == label]
        rng.shuffle(members)
        cut = max(1, round(len(members) * held_out))
        test += members[:cut]
        train += members[cut:]
    return sorted(train), sorted(test)


def build_model(width: int, num_classes: int) -> tf.keras.Model:
    """float32 [B, width] vectors in, float32 [B, num_classes] probabilities out."""
    model = tf.keras.Sequential([
        tf.keras.Input(shape=(width,)),
        tf.keras.layers.Dense(64, activation='relu'),
        tf.keras.layers.Dropout(0.2),
        tf.keras.layers.Dense(num_classes, activation='softmax'),
    ])
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), loss='sparse_categorical_crossentropy',
                  metrics=['accuracy'])
    return model


def main():
    parser = example_parser(__doc__, num=20, num_help='sentences per topic to use (topics.tsv has 20)')
    parser.add_argument('--held_out', type=float, default=0.25,
                        help='share of each topic kept out of training, for the test (default: %(default)s)')
    parser.add_argument('--epochs', type=int, default=40, help='training epochs (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the split and of the weights (default: %(default)s)')
    parser.add_argument('--report', metavar='FILE.json', help='save accuracy, chance and split sizes here')
    args = parser.parse_args()
    tf.keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_op_determinism()  # the same vectors train the same model every run

    texts, labels = topics(args.num)
    classes = sorted(set(labels))
    y = np.array([classes.index(label) for label in labels])
    train, test = split(labels, args.held_out, args.seed)

    with BertClient(**client_kwargs(args)) as bc:
        x = np.array(bc.encode(texts))  # float32 [N, D]; a writable copy of the read-only result
    print(f'encoded {len(texts)} sentences of {len(classes)} topics {classes}: vectors {x.shape}')

    model = build_model(x.shape[1], len(classes))
    history = model.fit(x[train], y[train], epochs=args.epochs, batch_size=16, verbose=0)
    _, accuracy = model.evaluate(x[test], y[test], verbose=0)
    chance = max(np.bincount(y[test])) / len(test)  # always answering the most common test topic
    print(f'trained on {len(train)} sentences for {args.epochs} epochs, '
          f'final training accuracy {history.history["accuracy"][-1]:.2f}')
    print(f'held-out accuracy: {accuracy:.3f} on {len(test)} sentences (chance: {chance:.3f})')

    predicted = model.predict(x[test], verbose=0).argmax(axis=1)
    for i, p in list(zip(test, predicted))[::max(1, len(test) // 8)]:  # a few of every topic
        mark = 'ok ' if p == y[i] else 'BAD'
        print(f'  {mark} {classes[p]:>8} <- {texts[i]}')

    if args.report:
        report = {'accuracy': float(accuracy), 'chance': float(chance), 'num_train': len(train),
                  'num_test': len(test), 'classes': classes}
        with open(args.report, 'w', encoding='utf-8') as f:
            json.dump(report, f, indent=2)
        print(f'saved the report to {args.report}')


if __name__ == '__main__':
    main()
