"""Compatibility shim: bert-as-service 1.x documented
``from bert_serving.server.helper import get_args_parser``. The parsers live in args.py."""
from .args import get_args_parser, get_benchmark_parser, get_run_args, get_shutdown_parser

__all__ = ['get_args_parser', 'get_shutdown_parser', 'get_benchmark_parser', 'get_run_args']
