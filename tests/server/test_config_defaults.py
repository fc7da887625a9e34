"""Each default is written once, in the config dataclasses: the command-line parsers, the pipeline's
own configs and the engine read it from there, and SHOW_CONFIG names every flag."""

from __future__ import annotations

import argparse
import inspect
from dataclasses import fields

import pytest

from bert_serving.server.args import get_args_parser, get_worker_parser
from bert_serving.server.config import EngineConfig, ServerConfig, field_default
from bert_serving.server.engine.devices import CPU_BATCH_TOKENS
from bert_serving.server.engine.encoder import Encoder
from bert_serving.server.errors import ConfigError
from bert_serving.server.http.settings import ProxyConfig
from bert_serving.server.pipeline.request_queue import SchedulerConfig
from bert_serving.server.pipeline.worker import WorkerConfig
from bert_serving.server.security import AuthConfig

ENGINE = {f.name for f in fields(EngineConfig)}
SERVER = {f.name for f in fields(ServerConfig)}
NOT_FLAGS = {'on_gpu', 'layer_shards'}  # decided by the server from its device plan


def _dests(parser: argparse.ArgumentParser) -> dict:
    return {a.dest: a.default for a in parser._actions if a.dest not in ('help', 'version')}


def test_every_start_flag_is_a_config_field_with_the_same_default():
    dests = _dests(get_args_parser())
    assert set(dests) == (ENGINE | SERVER) - NOT_FLAGS
    for dest, default in dests.items():
        owner = ServerConfig if dest in SERVER else EngineConfig
        expected = field_default(owner, dest)
        assert default == (list(expected) if isinstance(expected, tuple) else expected), dest


def test_parsed_defaults_build_the_default_configs():
    args = get_args_parser().parse_args([])
    assert ServerConfig.from_namespace(args) == ServerConfig()
    assert EngineConfig.from_namespace(args) == EngineConfig()


def test_the_worker_command_shares_the_engine_and_batching_defaults():
    dests = _dests(get_worker_parser())
    for dest in ('max_seq_len', 'pooling_layer', 'pooling_strategy', 'max_batch_size', 'max_batch_tokens'):
        owner = ServerConfig if dest in SERVER else EngineConfig
        expected = field_default(owner, dest)
        assert dests[dest] == (list(expected) if isinstance(expected, tuple) else expected), dest
    assert dests['server_timeout'] == field_default(WorkerConfig, 'server_timeout')


def test_pipeline_and_engine_defaults_come_from_the_server_config():
    scheduler = SchedulerConfig()
    for name in ('num_worker', 'max_batch_size', 'priority_batch_size', 'max_queue_rows', 'max_queue_bytes',
                 'max_reply_bytes', 'batch_timeout', 'heartbeat_timeout'):
        assert getattr(scheduler, name) == field_default(ServerConfig, name), name
    assert field_default(WorkerConfig, 'max_batch_size') == ServerConfig().max_batch_size
    assert field_default(WorkerConfig, 'max_batch_tokens') == CPU_BATCH_TOKENS
    encoder = inspect.signature(Encoder).parameters
    assert encoder['max_batch_size'].default == ServerConfig().max_batch_size
    assert encoder['max_batch_tokens'].default == CPU_BATCH_TOKENS
    proxy = ProxyConfig(http_port=1, port=2, port_out=3)
    assert (proxy.max_connect, proxy.cors, proxy.max_inputs, proxy.max_seq_len) == (
        ServerConfig().http_max_connect, ServerConfig().cors, ServerConfig().http_max_inputs, EngineConfig().max_seq_len)


def test_field_default_names_a_field_without_default():
    with pytest.raises(KeyError, match='no default'):
        field_default(ServerConfig, 'no_such_field')


def test_flags_hide_secrets_and_name_every_start_flag():
    server = ServerConfig(http_token='s3cret', http_port=8125)
    flags = {**EngineConfig().flags(), **server.flags()}
    assert flags['http_token'] == '***'
    assert 's3cret' not in repr(server) and 's3cret' not in str(flags)
    assert set(flags) == set(_dests(get_args_parser()))


def test_auth_and_proxy_configs_come_from_the_server_config(tmp_path):
    server = ServerConfig(http_port=8125, bind_host='127.0.0.1', http_max_inputs=7, no_remote_terminate=True,
                          http_secure_cookie=True, cors='https://example.org')
    auth = AuthConfig.from_server(server)
    assert (auth.bind_host, auth.auth_dir, auth.allow_remote_terminate) == ('127.0.0.1', None, False)
    assert AuthConfig.from_server(ServerConfig()).allow_remote_terminate  # 1.10: anyone may TERMINATE
    proxy = ProxyConfig.from_server(server, EngineConfig(max_seq_len=40, do_lower_case=False))
    assert (proxy.http_port, proxy.host, proxy.max_inputs, proxy.secure_cookie, proxy.cors) == (
        8125, '127.0.0.1', 7, True, 'https://example.org')
    assert (proxy.max_seq_len, proxy.do_lower_case) == (40, False)
    with pytest.raises(ConfigError, match='-remote_terminate or -no_remote_terminate'):
        ServerConfig(remote_terminate=True, no_remote_terminate=True)
    with pytest.raises(ConfigError, match='http_max_inputs'):
        ServerConfig(http_max_inputs=0)
