"""Entry points: bert-serving-start, bert-serving-worker, bert-serving-terminate, bert-serving-benchmark,
bert-serving-keygen."""
from __future__ import annotations

import argparse
import signal
import sys
from typing import List, Optional

from bert_serving.client.errors import BertServingError

from .args import format_args, get_args_parser, get_shutdown_parser
from .log import get_logger

__all__ = ['main', 'worker', 'terminate', 'benchmark']


def main(argv: Optional[List[str]] = None) -> int:
    """``bert-serving-start``: runs until Ctrl-C, SIGTERM or bert-serving-terminate.

    Returns:
        0 after a clean stop; 1 if the server stopped on a failure; 2 if it could not start
        (bad flag or model: one line saying what to change). argparse exits with 2 by itself.
    """
    from .service import BertServer
    args = get_args_parser().parse_args(argv)
    print(format_args(args), flush=True)
    logger = get_logger('SERVER', args.verbose)
    try:
        server = BertServer(args)
    except BertServingError as e:  # ConfigError, ModelError, ...: the message says what to change
        logger.error('%s', e)
        return 2

    def on_signal(signum, _frame):
        logger.info('received %s, shutting down', signal.Signals(signum).name)
        server.request_stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    server.start()
    while server.is_alive():
        server.join(timeout=0.5)
    server.close()
    if server.failure:
        logger.error('server stopped: %s', server.failure)
        return 1
    return 0


def worker(argv: Optional[List[str]] = None) -> int:
    """``bert-serving-worker``: one worker on this machine that joins a server's -port_worker.

    Returns:
        0 after Ctrl-C or SIGTERM; 2 if it could not start (one line saying why); 3 if the server
        refused it (a different model or flags: the reason is logged).
    """
    from .args import get_worker_parser
    from .pipeline.remote import run_remote
    from .pipeline.worker import leave
    args = get_worker_parser().parse_args(argv)
    logger = get_logger('WORKER', args.verbose)
    try:
        code = run_remote(args)
    except BertServingError as e:
        logger.error('%s', e)
        return 2
    leave(code)  # TensorFlow's teardown of its thread pools can take seconds: the sockets are closed


def terminate(argv: Optional[List[str]] = None) -> int:
    """``bert-serving-terminate -port N``: stops a server and waits until its port is free."""
    from .service import BertServer
    args = get_shutdown_parser().parse_args(argv)
    logger = get_logger('TERMINATE')
    try:
        stopped = BertServer.shutdown(args)
    except BertServingError as e:  # e.g. a wrong -server_key / -client_key file
        logger.error('%s', e)
        return 2
    if stopped:
        logger.info('server on %s:%d stopped', args.ip, args.port)
        return 0
    logger.error('server on %s:%d did not stop within %d ms: is it running there? is -port right?',
                 args.ip, args.port, args.timeout)
    return 1


def benchmark(argv: Optional[List[str]] = None) -> int:
    """``bert-serving-benchmark``: the original's experiments against a local server."""
    from .benchmark import run_benchmark
    return run_benchmark(argv)


def get_keygen_parser() -> argparse.ArgumentParser:
    """The parser of ``bert-serving-keygen``."""
    parser = argparse.ArgumentParser(
        prog='bert-serving-keygen',
        description='Write a CurveZMQ key pair, NAME.key (public) and NAME.key_secret (secret), for a server '
                    'started with -auth_dir DIR. Run it once with NAME "server" in the server\'s DIR, and once '
                    'per client or worker.')
    parser.add_argument('dir', help='folder to write the pair into (created if missing)')
    parser.add_argument('name', help='"server" for the server\'s own pair, else a name for the client or worker '
                                     '(e.g. alice, worker-gpu1)')
    return parser


def keygen(argv: Optional[List[str]] = None) -> int:
    """``bert-serving-keygen DIR NAME``: writes a pair and says where each file goes.

    Returns:
        0 once written; 2 if NAME is not a plain name, the pair exists, or DIR is not writable.
    """
    from .keygen import write_keypair
    from .security import AUTHORIZED_DIR, SERVER_SECRET_FILE, WORKERS_DIR
    args = get_keygen_parser().parse_args(argv)
    try:
        public, secret = write_keypair(args.dir, args.name)
    except (BertServingError, OSError) as e:
        print(f'bert-serving-keygen: {e}', file=sys.stderr)
        return 2
    print(f'wrote {public} (public) and {secret} (secret, readable by you only)')
    if args.name == 'server':
        print(f'- {secret.name} stays on the server: start it with `bert-serving-start -auth_dir {args.dir} ...`\n'
              f'- copy {public} to every client and worker (BertClient(server_key=...), -server_key)\n'
              f'- put the public NAME.key of each client into {public.parent / AUTHORIZED_DIR}/ and of each '
              f'remote worker into {public.parent / WORKERS_DIR}/ (both created, empty)')
    else:
        print(f'- copy {public} into the server\'s -auth_dir {AUTHORIZED_DIR}/ folder to let this client in, or '
              f'into {WORKERS_DIR}/ for a remote worker (bert-serving-worker)\n'
              f'- give {secret} to this client or worker only (BertClient(client_key=...), -client_key), '
              f'together with the server\'s public server.key (not {SERVER_SECRET_FILE})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
