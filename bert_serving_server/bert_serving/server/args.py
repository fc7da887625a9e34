"""Command-line flags of bert-serving-start, -terminate and -benchmark.

The flags, aliases and defaults are those of bert-as-service 1.10.0; the help
text says when to change each one. New flags are marked (new).
"""
from __future__ import annotations

import argparse
import sys

from bert_serving.client import __version__

from .config import EngineConfig, PoolingStrategy, ServerConfig, field_default, parse_max_seq_len

__all__ = ['get_args_parser', 'get_shutdown_parser', 'get_benchmark_parser', 'get_worker_parser', 'get_run_args',
           'format_args',
           'BENCHMARK_EXPERIMENTS']

# The variables bert-serving-benchmark varies, one experiment each, in the order they run.
BENCHMARK_EXPERIMENTS = ('client_batch_size', 'max_batch_size', 'max_seq_len', 'num_client', 'pooling_layer')


def _server(name: str):
    """The default of a flag kept in ServerConfig: the config dataclasses are the one source."""
    return field_default(ServerConfig, name)


def _engine(name: str):
    """The default of a flag kept in EngineConfig."""
    return field_default(EngineConfig, name)


def _max_seq_len(value: str):
    try:
        return parse_max_seq_len(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _strategy(value: str) -> PoolingStrategy:
    try:
        return PoolingStrategy.from_string(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    """File Paths and BERT Parameters: what decides the vectors (shared with bert-serving-worker)."""
    paths = parser.add_argument_group('File Paths', 'where the pretrained / fine-tuned BERT model lives')
    paths.add_argument('-model_dir', type=str, default=_engine('model_dir'),
                       help='directory of a pretrained BERT model (Google checkpoint or Hugging Face '
                            'layout); omit it to use the bundled all-MiniLM-L6-v2')
    paths.add_argument('-tuned_model_dir', type=str, default=_engine('tuned_model_dir'),
                       help='directory of a fine-tuned checkpoint (e.g. run_classifier.py output): every '
                            'weight comes from here (-ckpt_name), config and vocab from -model_dir')
    paths.add_argument('-ckpt_name', type=str, default=_engine('ckpt_name'),
                       help='checkpoint prefix; change it for a fine-tuned model saved as e.g. model.ckpt-1000')
    paths.add_argument('-config_name', type=str, default=_engine('config_name'),
                       help='file name of the BERT JSON config (Google layout)')
    paths.add_argument('-graph_tmp_dir', type=str, default=_engine('graph_tmp_dir'),
                       help='where frozen graphs are cached; default: the user cache dir '
                            '(~/.cache/bert-serving)')

    bert = parser.add_argument_group('BERT Parameters', 'how the model reads inputs and pools them')
    bert.add_argument('-max_seq_len', type=_max_seq_len, default=_engine('max_seq_len'),
                      help='longest input in tokens, [CLS]/[SEP] included; longer ones are cut on the '
                           'right. NONE uses the longest input of each request')
    bert.add_argument('-cased_tokenization', dest='do_lower_case', action='store_false', default=_engine('do_lower_case'),
                      help='keep case and accents; use it with cased models')
    bert.add_argument('-pooling_layer', type=int, nargs='+', default=list(_engine('pooling_layer')),
                      help='encoder layer(s) to pool, -1 the last; several are concatenated')
    bert.add_argument('-pooling_strategy', type=_strategy, default=_engine('pooling_strategy'),
                      choices=list(PoolingStrategy), metavar='{' + ','.join(PoolingStrategy.__members__) + '}',
                      help='how token vectors become one vector (NONE keeps every token)')
    bert.add_argument('-mask_cls_sep', action='store_true', default=_engine('mask_cls_sep'),
                      help='pool only the words: the input mask is 0 at [CLS] and [SEP], as in the original, '
                           'so no token attends to them and pooling skips them (CLS_TOKEN changes too)')
    bert.add_argument('-no_special_token', action='store_true', default=_engine('no_special_token'),
                      help='do not add [CLS]/[SEP] to pre-tokenized input (is_tokenized=True)')
    bert.add_argument('-show_tokens_to_client', action='store_true', default=_server('show_tokens_to_client'),
                      help='send the word pieces back to the client with each result')
    bert.add_argument('-no_position_embeddings', action='store_true', default=_engine('no_position_embeddings'),
                      help='do not add position embeddings (for models trained without them)')
    bert.add_argument('-num_labels', type=int, default=_engine('num_labels'),
                      help='labels of the fine-tuned CLASSIFICATION head (its output_weights [K, H]); '
                           'REGRESSION always reads a 1-unit head')


def _add_compute_args(group) -> None:
    """Devices and batching of a worker (shared with bert-serving-worker)."""
    group.add_argument('-max_batch_size', type=int, default=_server('max_batch_size'),
                       help='most sequences per batch; bigger requests are split')
    group.add_argument('-max_batch_tokens', type=int, default=_server('max_batch_tokens'),
                       help='(new) most padded tokens (inputs x longest input) per model call; a batch is cut '
                            'into calls under it. Default by device: on a GPU max_batch_size x max_seq_len (the '
                            'original\'s batch), on a CPU 4096 (measured fastest). Lower it if memory runs short')
    group.add_argument('-cpu', action='store_true', default=_server('cpu'),
                       help='run on CPU even where a GPU exists')
    group.add_argument('-xla', action='store_true', default=_engine('xla'),
                       help='compile the graph with XLA (experimental)')
    group.add_argument('-fp16', action='store_true', default=_engine('fp16'),
                       help='halve the result size: float16 vectors, as in the original; computed in float16 on '
                            'a GPU, on a CPU in bfloat16 where it has AVX512-BF16/AMX, else in float32')
    group.add_argument('-bf16', action='store_true', default=_engine('bf16'),
                       help='(new) run matrix products in bfloat16: about 1.3x faster on CPUs with '
                            'AVX512-BF16, cosine >= 0.9999 to float32')
    group.add_argument('-gpu_memory_fraction', type=float, default=_server('gpu_memory_fraction'),
                       help='share of each GPU\'s memory a worker may take, in (0, 1]')
    group.add_argument('-device_map', type=int, nargs='+', default=list(_server('device_map')),
                       help='GPU ids for the workers, reused round-robin when fewer than workers')
    group.add_argument('-prefetch_size', type=int, default=_server('prefetch_size'),
                       help='batches a worker may hold ahead of the one it computes '
                            '(capped at 2 in practice; 0 disables prefetching). A batch goes ahead '
                            'only when the queue fills one (-max_batch_size rows); smaller requests '
                            'wait for the worker and join one larger batch')
    group.add_argument('-fixed_embed_length', action='store_true', default=_engine('fixed_embed_length'),
                       help='with NONE pooling and -max_seq_len NONE, pad the token axis to '
                            'max_position_embeddings so every result has the same shape')
    group.add_argument('-engine', choices=('tensorflow', 'fake'), default=_engine('engine'),
                       help='fake: a numpy stand-in model for testing the pipeline without TensorFlow')
    group.add_argument('-fake_row_seconds', type=float, default=_engine('fake_row_seconds'),
                       help='with -engine fake: seconds the fake model takes per input, to test the service '
                            'at a real model\'s speed (BERT-base on a CPU takes ~0.02); ignored otherwise')


def get_args_parser() -> argparse.ArgumentParser:
    """The parser of ``bert-serving-start``."""
    parser = argparse.ArgumentParser(
        prog='bert-serving-start', description='Start a BertServer: sentences in, fixed-length vectors out.')
    _add_model_args(parser)
    serving = parser.add_argument_group('Serving Configs', 'ports, workers, devices and batching')
    serving.add_argument('-port', '-port_in', '-port_data', type=int, default=_server('port'),
                         help='port on which clients push requests')
    serving.add_argument('-port_out', '-port_result', type=int, default=_server('port_out'),
                         help='port on which results are published to clients')
    serving.add_argument('-http_port', type=int, default=_server('http_port'),
                         help='start an HTTP proxy on this port')
    serving.add_argument('-http_host', type=str, default=_server('http_host'),
                         help='(new) address the HTTP proxy listens on; default: that of -bind (all interfaces '
                              'with *). Give 127.0.0.1 to keep HTTP on this machine while the ZeroMQ ports stay '
                              'open, or an interface name such as eth0')
    serving.add_argument('-http_max_connect', type=int, default=_server('http_max_connect'),
                         help='HTTP requests in flight before the proxy answers 429')
    serving.add_argument('-http_max_inputs', type=int, default=_server('http_max_inputs'),
                         help='(new) most texts in one HTTP request; more get 413. Raise it for trusted batch '
                              'jobs that send large requests, lower it to keep one caller from filling the queue')
    serving.add_argument('-cors', type=str, default=_server('cors'),
                         help='Access-Control-Allow-Origin of HTTP responses')
    serving.add_argument('-num_worker', type=int, default=_server('num_worker'),
                         help='worker processes; each holds a copy of the model')
    serving.add_argument('-priority_batch_size', type=int, default=_server('priority_batch_size'),
                         help='requests with at most this many sequences jump the queue')
    serving.add_argument('-port_worker', type=int, default=_server('port_worker'),
                         help='(new) let remote workers (bert-serving-worker) join on this port; off by default')
    serving.add_argument('-port_worker_sink', type=int, default=_server('port_worker_sink'),
                         help='(new) port remote workers send results to; default -port_worker + 1')
    _add_compute_args(serving)

    life = parser.add_argument_group('Request lifecycle (new)', 'bounds on waiting, queueing and stopping')
    life.add_argument('-request_timeout', type=float, default=_server('request_timeout'),
                      help='seconds an accepted request may go without progress (a piece of it computed and '
                           'back at the sink); then it fails with a reason instead of hanging. A request whose '
                           'pieces keep coming has no time bound, however big. Raise it if one batch can take '
                           'longer on your hardware; 0 = no bound')
    life.add_argument('-max_queue_rows', type=int, default=_server('max_queue_rows'),
                      help='most inputs accepted and not computed yet; a request beyond the room left is '
                           'refused at once with "server busy, retry", except a request bigger than the whole '
                           'queue: one at a time goes anyway and frees room as its pieces are done. Lower it to '
                           'bound memory and latency')
    life.add_argument('-max_request_bytes', type=int, default=_server('max_request_bytes'),
                      help='largest request payload (JSON bytes) a client may send; a bigger one is refused with '
                           '"send fewer sentences per request". Raise it for huge calls, lower it on a shared server')
    life.add_argument('-max_queue_bytes', type=int, default=_server('max_queue_bytes'),
                      help='most payload bytes accepted and not computed yet (with -max_queue_rows); more is '
                           'refused at once with "server busy, retry", except one request bigger than the '
                           'queue at a time. Lower it to bound the memory of the server')
    life.add_argument('-max_reply_bytes', type=int, default=_server('max_reply_bytes'),
                      help='largest reply one request may produce, checked before anything is computed (it '
                           'matters with -pooling_strategy NONE: inputs x max_seq_len x width x 4 bytes). Lower '
                           'it on a shared server; clients then send fewer inputs per call')
    life.add_argument('-drain_timeout', type=float, default=_server('drain_timeout'),
                      help='on shutdown, seconds in-flight requests get to finish; the rest fail with '
                           '"server shutting down"')
    life.add_argument('-heartbeat_timeout', type=float, default=_server('heartbeat_timeout'),
                      help='a worker silent this many seconds (frozen, dead host) is replaced and its '
                           'batches go to others')
    life.add_argument('-batch_timeout', type=float, default=_server('batch_timeout'),
                      help='a worker holding one batch this long (hung model call) is replaced; raise it '
                           'for big batches on slow CPUs')

    security = parser.add_argument_group('Security (new)', 'who may reach the ports')
    security.add_argument('-auth_dir', type=str, default=_server('auth_dir'),
                          help='CurveZMQ on every TCP port: DIR holds server.key_secret, authorized/*.key (the '
                               'public keys of clients let in) and authorized_workers/*.key (of remote workers); '
                               'bert-serving-keygen DIR NAME writes them. Use it whenever other machines can reach '
                               'the ports')
    security.add_argument('-bind', dest='bind_host', type=str, default=_server('bind_host'),
                          help='interface the ZeroMQ ports and the HTTP proxy (unless -http_host) bind: * for all '
                               '(as the original), 127.0.0.1 for this machine only, an address, or an interface '
                               'name such as eth0')
    terminate = security.add_mutually_exclusive_group()
    terminate.add_argument('-no_remote_terminate', action='store_true', default=_server('no_remote_terminate'),
                           help="obey TERMINATE only from this machine's loopback (the default with -auth_dir); "
                                'SIGTERM and Ctrl-C still stop the server')
    terminate.add_argument('-remote_terminate', action='store_true', default=_server('remote_terminate'),
                           help='(new) with -auth_dir, let every authorised key stop the server with TERMINATE '
                                "(by default only this machine's loopback may); use it when you stop the server "
                                'from another host with bert-serving-terminate. Without -auth_dir it is on already')
    security.add_argument('-http_token', type=str, default=_server('http_token'),
                          help='the HTTP proxy requires "Authorization: Bearer TOKEN" on every endpoint but '
                               '/health; visible in ps: prefer -http_token_file')
    security.add_argument('-http_token_file', type=str, default=_server('http_token_file'),
                          help='the same, read from the first line of this file')
    security.add_argument('-http_secure_cookie', action='store_true', default=_server('http_secure_cookie'),
                          help='(new) mark the dashboard\'s session cookie Secure (HTTPS only) even when the proxy '
                               'sees plain HTTP; give it behind a TLS reverse proxy that sends no X-Forwarded-Proto')
    security.add_argument('-metrics_public', action='store_true', default=_server('metrics_public'),
                          help='with a token, /metrics answers without it (trusted monitoring network)')

    parser.add_argument('-verbose', action='store_true', default=_server('verbose'), help='debug logging')
    parser.add_argument('-version', action='version', version='%(prog)s ' + __version__)
    return parser


def _add_key_args(parser) -> None:
    """-server_key / -client_key of a peer that connects to a server started with -auth_dir."""
    parser.add_argument('-server_key', type=str, default=None,
                        help='(new) for a server started with -auth_dir: its public server.key '
                             '(default $BERT_SERVING_SERVER_KEY)')
    parser.add_argument('-client_key', type=str, default=None,
                        help='(new) with -server_key: your NAME.key_secret, whose NAME.key is in the server\'s '
                             'authorized/ (a client) or authorized_workers/ (a worker) (default $BERT_SERVING_CLIENT_KEY)')


def get_worker_parser() -> argparse.ArgumentParser:
    """The parser of ``bert-serving-worker``: one worker that joins a server over TCP."""
    from .pipeline.worker import WorkerConfig  # only this command needs the worker's module
    parser = argparse.ArgumentParser(
        prog='bert-serving-worker',
        description='Run one worker that joins a bert-serving server (started with -port_worker) from this '
                    'machine. The model and engine flags must be those of the server.')
    server = parser.add_argument_group('Server', 'where the server is')
    server.add_argument('-ip', type=str, default='localhost', help='host of the server')
    server.add_argument('-port_worker', type=int, default=5557, help='the server\'s -port_worker')
    server.add_argument('-server_timeout', type=float, default=field_default(WorkerConfig, 'server_timeout'),
                        help='seconds without a word from the server before registering again (with backoff)')
    _add_key_args(server)
    _add_model_args(parser)
    compute = parser.add_argument_group('Compute', 'device and batching of this worker')
    _add_compute_args(compute)
    parser.add_argument('-verbose', action='store_true', default=_server('verbose'), help='debug logging')
    parser.add_argument('-version', action='version', version='%(prog)s ' + __version__)
    return parser


def get_shutdown_parser() -> argparse.ArgumentParser:
    """The parser of ``bert-serving-terminate``."""
    parser = argparse.ArgumentParser(prog='bert-serving-terminate',
                                     description='Shut down a BertServer listening on a port.')
    parser.add_argument('-ip', type=str, default='localhost', help='address of the server')
    parser.add_argument('-port', '-port_in', '-port_data', type=int, required=True,
                        help='the server\'s -port')
    parser.add_argument('-timeout', type=int, default=5000,
                        help='milliseconds to wait for the server to stop')
    _add_key_args(parser)
    return parser


def get_benchmark_parser() -> argparse.ArgumentParser:
    """The parser of ``bert-serving-benchmark``: the server flags plus the experiments."""
    parser = get_args_parser()
    parser.prog = 'bert-serving-benchmark'
    parser.description = 'Benchmark a BertServer started locally.'
    # No fixed ports: each benchmark server takes free ones unless -port / -port_out are given.
    parser.set_defaults(num_client=1, client_batch_size=4096, port=None, port_out=None)
    group = parser.add_argument_group('Benchmark parameters', 'the experiments to run')
    group.add_argument('-experiments', type=str, nargs='+', default=list(BENCHMARK_EXPERIMENTS),
                       choices=BENCHMARK_EXPERIMENTS, metavar='NAME',
                       help='(new) experiments to run, any of: ' + ' '.join(BENCHMARK_EXPERIMENTS))
    group.add_argument('-test_client_batch_size', type=int, nargs='*', default=[1, 16, 256, 4096])
    group.add_argument('-test_max_batch_size', type=int, nargs='*', default=[8, 32, 128, 512])
    group.add_argument('-test_max_seq_len', type=int, nargs='*', default=[32, 64, 128, 256])
    group.add_argument('-test_num_client', type=int, nargs='*', default=[1, 4, 16, 64])
    group.add_argument('-test_pooling_layer', type=int, nargs='*', default=[[-j] for j in range(1, 13)])
    group.add_argument('-num_client', type=int, default=1, help='clients in the baseline experiment')
    group.add_argument('-client_batch_size', type=int, default=4096,
                       help='sentences per request in the baseline experiment')
    group.add_argument('-wait_till_ready', type=int, default=30,
                       help='seconds to wait for the server to be ready')
    group.add_argument('-client_vocab_file', type=str, default=None,
                       help='text file whose lines are the client sentences (default: the bench corpus)')
    group.add_argument('-num_repeat', type=int, default=10,
                       help='repeats per experiment (>2); the first two are warm-up and dropped')
    group.add_argument('-output', type=str, default=None,
                       help='(new) write the results to this .json or .csv file')
    group.add_argument('-plot', type=str, default=None,
                       help='(new) draw samples/s of every experiment into this PNG (needs matplotlib: '
                            'pip install "bert-serving-server[bench]")')
    return parser


def format_args(args) -> str:
    """The table of arguments printed at start."""
    from .log import redact_args, redact_argv
    rows = [f'{k:>24} = {v}' for k, v in sorted(redact_args(vars(args)).items())]
    return '\n'.join([f'usage: {" ".join(redact_argv(sys.argv))}', f'{"ARG":>24}   VALUE', '_' * 50] + rows)


def get_run_args(parser_fn=get_args_parser, printed: bool = True, argv=None) -> argparse.Namespace:
    """Parses the command line (``sys.argv`` by default) with ``parser_fn()``, as 1.x scripts do.

    Args:
        parser_fn: returns the parser, e.g. get_args_parser or get_benchmark_parser.
        printed: print the table of arguments.
        argv: the arguments; None reads ``sys.argv[1:]``.
    """
    args = parser_fn().parse_args(argv)
    if printed:
        print(format_args(args), flush=True)
    return args
