"""The command-line options every example shares: where the server is, and how much data to use.

The defaults are those of ``bert-serving-start`` and ``BertClient``: the server on ``localhost``
takes requests on port 5555 and publishes results on port 5556.
"""
from __future__ import annotations

import argparse

__all__ = ['example_parser', 'client_kwargs']


def example_parser(doc: str, num: int, num_help: str) -> argparse.ArgumentParser:
    """A parser with ``--ip``, ``--port``, ``--port_out``, ``--timeout`` and ``--num``.

    Args:
        doc: The example's module docstring; its first line is the description, the rest the epilog.
        num: Default of ``--num``.
        num_help: What ``--num`` counts in this example.
    """
    summary, _, details = doc.strip().partition('\n')
    parser = argparse.ArgumentParser(description=summary, epilog=details.strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    server = parser.add_argument_group('server', 'where the bert-serving server listens')
    server.add_argument('--ip', default='localhost', help='address of the server (default: %(default)s)')
    server.add_argument('--port', type=int, default=5555,
                        help='its request port, bert-serving-start -port (default: %(default)s)')
    server.add_argument('--port_out', type=int, default=5556,
                        help='its result port, bert-serving-start -port_out (default: %(default)s)')
    server.add_argument('--timeout', type=int, default=60000,
                        help='milliseconds to wait for each reply before giving up (default: %(default)s)')
    parser.add_argument('--num', type=int, default=num, help=f'{num_help} (default: %(default)s)')
    return parser


def client_kwargs(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``BertClient`` / ``ConcurrentBertClient`` for the parsed options."""
    return {'ip': args.ip, 'port': args.port, 'port_out': args.port_out, 'timeout': args.timeout}
