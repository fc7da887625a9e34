"""Plot what each layer of the model makes of four topics: sentence vectors projected by PCA.

Every layer pools its own vectors, so one server can serve them all at once: started with
several -pooling_layer values, it concatenates those layers' vectors, in the order given, and
this script cuts each result back into one vector per layer. Either start such a server first:

    make serve ARGS='-pooling_layer -1 -2 -3 -4 -5 -6'
    .venv/bin/python examples/visualize_layers.py --output layers.png

or let the script start one itself (from Python, with BertServer) on --port/--port_out, which
must then be free; it stops the server when done:

    .venv/bin/python examples/visualize_layers.py --start_server --port 5557 --port_out 5558

Each panel of the PNG shows one layer: the sentences of examples/data/topics.tsv, projected to
their two principal components and coloured by topic. ``--save layers.npz`` keeps the vectors.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time

import numpy as np

from bert_serving.client import BertClient

from cli import client_kwargs, example_parser
from corpus import topics

READY_SECONDS = 180  # a worker loads the model in seconds; a first start also builds the graph


@contextlib.contextmanager
def own_server(args):
    """Runs a BertServer with ``args.layers`` on ``args.port``/``args.port_out`` until the block ends."""
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # the server imports TensorFlow
    from bert_serving.server import BertServer
    from bert_serving.server.helper import get_args_parser

    flags = ['-pooling_layer', *map(str, args.layers), '-pooling_strategy', args.pooling_strategy,
             '-port', str(args.port), '-port_out', str(args.port_out), '-num_worker', '1', '-cpu']
    if args.model_dir:
        flags += ['-model_dir', args.model_dir]
    print(f'starting a server: bert-serving-start {" ".join(flags)}', flush=True)
    server = BertServer(get_args_parser().parse_args(flags))
    # start() and a bounded wait, rather than `with BertServer(...)`, which waits for as long as it takes.
    server.start()
    try:
        deadline = time.monotonic() + READY_SECONDS
        while not server.is_ready.wait(0.5):
            if not server.is_alive() or time.monotonic() > deadline:
                sys.exit(f'the server did not become ready: {server.failure or "timed out"}')
        yield
    finally:
        server.close()


def per_layer(bc: BertClient, texts: list) -> dict:
    """``{layer: float32 [N, D]}``, cut from the server's concatenated [N, L*D] vectors."""
    config = bc.server_config
    layers, strategy = config['pooling_layer'], config['pooling_strategy']
    if strategy in ('REDUCE_MEAN_MAX', 'NONE', 'CLS_POOLED', 'CLASSIFICATION', 'REGRESSION'):
        sys.exit(f'the server pools with {strategy}, whose output is not one block per layer; '
                 'start it with REDUCE_MEAN, REDUCE_MAX, CLS_TOKEN or SEP_TOKEN')
    vectors = bc.encode(texts)
    width = vectors.shape[1] // len(layers)
    return {layer: vectors[:, i * width:(i + 1) * width] for i, layer in enumerate(layers)}


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    """float32 [N, D] -> [N, 2]: the coordinates along the two directions of largest variance."""
    centred = vectors - vectors.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)  # rows: principal directions
    return centred @ components[:2].T


def plot(by_layer: dict, labels: list, strategy: str, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')  # no display needed: draw straight into the PNG
    import matplotlib.pyplot as plt

    classes = sorted(set(labels))
    columns = min(3, len(by_layer))
    rows = math.ceil(len(by_layer) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 4 * rows), squeeze=False)
    for ax, (layer, vectors) in zip(axes.flat, by_layer.items()):
        points = pca_2d(vectors)
        for k, name in enumerate(classes):
            mine = [i for i, label in enumerate(labels) if label == name]
            ax.scatter(points[mine, 0], points[mine, 1], s=12, color=f'C{k}', label=name)
        ax.set_title(f'pooling_layer {layer}')
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(by_layer):]:
        ax.axis('off')
    axes.flat[0].legend(loc='best', fontsize='small')
    fig.suptitle(f'{strategy} vectors of {len(labels)} sentences, by layer (PCA to 2-D)')
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main():
    parser = example_parser(__doc__, num=20, num_help='sentences per topic to plot (topics.tsv has 20)')
    parser.add_argument('--start_server', action='store_true',
                        help='start a server on --port/--port_out for this run, instead of using a running one')
    parser.add_argument('--layers', type=int, nargs='+', default=[-1, -2, -3, -4, -5, -6],
                        help='with --start_server: the layers to pool (default: all six of the bundled model)')
    parser.add_argument('--pooling_strategy', default='REDUCE_MEAN',
                        help='with --start_server: how each layer is pooled (default: %(default)s)')
    parser.add_argument('--model_dir', help='with --start_server: the model (default: the bundled one)')
    parser.add_argument('--output', default='layers.png', help='the PNG to write (default: %(default)s)')
    parser.add_argument('--save', metavar='FILE.npz', help='save the vectors here, one key per layer ("layer_-2")')
    args = parser.parse_args()
    texts, labels = topics(args.num)

    with own_server(args) if args.start_server else contextlib.nullcontext():
        with BertClient(**client_kwargs(args)) as bc:
            strategy = bc.server_config['pooling_strategy']
            by_layer = per_layer(bc, texts)
    print(f'encoded {len(texts)} sentences at layers {list(by_layer)} with {strategy}: '
          f'{next(iter(by_layer.values())).shape[1]} values per layer')

    plot(by_layer, labels, strategy, args.output)
    print(f'saved the plot to {args.output} ({os.path.getsize(args.output)} bytes)')
    if args.save:
        np.savez(args.save, labels=np.array(labels), **{f'layer_{k}': v for k, v in by_layer.items()})
        print(f'saved the vectors to {args.save}')


if __name__ == '__main__':
    main()
