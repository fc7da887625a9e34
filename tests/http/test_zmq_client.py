"""ZmqBackend against a scripted ZeroMQ peer: replies are matched by req_id, whatever their order,
and taken only when their topic names the proxy's identity whole.

The peer binds, in the test's event loop, what the server binds::

    PULL  <- port       the backend's requests
    XPUB  -> port_out   replies, published once the backend's subscription has arrived
"""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import zmq
import zmq.asyncio

from bert_serving.client.protocol import (Command, ErrorCode, pack_error, pack_json_reply, pack_result,
                                          reply_topic, unpack_request)
from bert_serving.server.http.errors import (BackendError, BackendTimeout, BackendUnavailable, InvalidField,
                                             ServerBusy, ServerShuttingDown)
from bert_serving.server.http.zmq_client import ZmqBackend


CODED = {'BUSY': (ErrorCode.BUSY, 2.5), 'STOPPING': (ErrorCode.SHUTTING_DOWN, None),
         'INVALID': (ErrorCode.BAD_REQUEST, None), 'DEADLINE': (ErrorCode.TIMEOUT, None),
         'FAILED': (ErrorCode.FAILED, None)}


class ScriptedPeer:
    """Collects ``n`` requests, then answers them in reverse order (texts 'DROP' never, 'FAIL' with an
    error without a code, one of ``CODED`` with that error code)."""

    def __init__(self, ctx: zmq.asyncio.Context):
        self.pull = ctx.socket(zmq.PULL)
        self.xpub = ctx.socket(zmq.XPUB)
        for sock in (self.pull, self.xpub):
            sock.linger = 0
        self.port = self.pull.bind_to_random_port('tcp://127.0.0.1')
        self.port_out = self.xpub.bind_to_random_port('tcp://127.0.0.1')
        self.requests = []

    async def serve(self, n: int) -> None:
        assert (await self.xpub.recv())[:1] == b'\x01'  # the backend's subscription
        while len(self.requests) < n:
            self.requests.append(unpack_request(await self.pull.recv_multipart()))
        for req in reversed(self.requests):
            if req.command == Command.SHOW_STATUS:
                await self.xpub.send_multipart(pack_json_reply(req.identity, req.req_id, {'ready': True}))
                continue
            payload = json.loads(req.payload)
            texts = payload['texts'] if isinstance(payload, dict) else payload
            if texts == ['DROP']:
                continue
            if texts == ['FAIL']:
                await self.xpub.send_multipart(pack_error(req.identity, req.req_id, 'texts[0] is FAIL'))
                continue
            if texts[0] in CODED:
                code, retry_after = CODED[texts[0]]
                await self.xpub.send_multipart(pack_error(req.identity, req.req_id, f'coded {code}', code,
                                                          retry_after))
                continue
            array = np.array([[float(t)] for t in texts], dtype=np.float32)
            tokens = [[t] for t in texts] if isinstance(payload, dict) and payload['show_tokens'] else None
            await self.xpub.send_multipart(pack_result(req.identity, req.req_id, array, tokens))

    def close(self) -> None:
        self.pull.close()
        self.xpub.close()


def run(check) -> None:
    async def main():
        ctx = zmq.asyncio.Context()
        peer = ScriptedPeer(ctx)
        backend = ZmqBackend('127.0.0.1', peer.port, peer.port_out, request_timeout=2.0, status_timeout=2.0)
        await backend.start()
        try:
            await check(backend, peer)
        finally:
            await backend.close()
            peer.close()
            ctx.term()

    asyncio.run(main())


def test_concurrent_requests_share_one_identity_and_each_gets_its_own_reply():
    async def check(backend, peer):
        server = asyncio.ensure_future(peer.serve(101))
        replies = await asyncio.gather(backend.server_status(),
                                       *(backend.encode([str(i), str(i + 0.5)]) for i in range(100)))
        await server
        assert replies[0] == {'ready': True}
        for i, reply in enumerate(replies[1:]):
            np.testing.assert_array_equal(reply.array, [[i], [i + 0.5]])
            assert reply.tokens is None
        assert {r.identity for r in peer.requests} == {backend.identity}
        assert len({r.req_id for r in peer.requests}) == 101
        status = backend.client_status()
        assert status['num_request'] == status['num_reply'] == 101 and status['num_pending_request'] == 0

    run(check)


def test_show_tokens_sends_the_object_payload():
    async def check(backend, peer):
        server = asyncio.ensure_future(peer.serve(2))
        with_tokens, plain = await asyncio.gather(backend.encode(['1', '2'], show_tokens=True), backend.encode(['3']))
        await server
        assert with_tokens.tokens == [['1'], ['2']] and plain.tokens is None
        payloads = sorted(json.loads(r.payload) for r in peer.requests if r.msg_len == 2)
        assert payloads == [{'texts': ['1', '2'], 'show_tokens': True}]

    run(check)


def test_a_missing_reply_times_out_and_an_error_reply_raises_without_disturbing_others():
    async def check(backend, peer):
        server = asyncio.ensure_future(peer.serve(3))
        dropped, failed, fine = await asyncio.gather(backend.encode(['DROP']), backend.encode(['FAIL']),
                                                     backend.encode(['7']), return_exceptions=True)
        await server
        assert isinstance(dropped, BackendTimeout) and 'no reply from the server within 2s' in str(dropped)
        assert isinstance(failed, BackendError) and 'texts[0] is FAIL' in str(failed)
        np.testing.assert_array_equal(fine.array, [[7]])
        assert backend.client_status()['num_pending_request'] == 0

    run(check)


def test_error_codes_become_the_http_errors_they_stand_for():
    async def check(backend, peer):
        server = asyncio.ensure_future(peer.serve(len(CODED)))
        outcomes = await asyncio.gather(*(backend.encode([word]) for word in CODED), return_exceptions=True)
        await server
        busy, stopping, invalid, deadline, failed = outcomes
        assert type(busy) is ServerBusy and busy.headers == {'Retry-After': '3'} and 'coded busy' in busy.message
        assert type(stopping) is ServerShuttingDown and stopping.status == 503
        assert type(invalid) is InvalidField and invalid.message == 'coded bad_request'
        assert type(deadline) is BackendTimeout and deadline.status == 504
        assert type(failed) is BackendError and failed.status == 502
        assert backend.client_status()['num_error'] == len(CODED)

    run(check)


def test_requests_after_close_are_refused():
    async def check(backend, peer):
        await backend.close()
        with pytest.raises(BackendUnavailable):
            await backend.encode(['1'])

    run(check)


def test_a_reply_to_another_identity_is_never_taken_for_ours():
    """The SUB also receives topics that merely start with the proxy's identity: such a reply, even one
    carrying our req_id, is dropped and counted, and the real reply (plain identity, or identity NUL
    key) is taken."""
    async def check(backend, peer):
        assert (await peer.xpub.recv())[:1] == b'\x01'
        first = asyncio.ensure_future(backend.encode(['1']))
        second = asyncio.ensure_future(backend.encode(['2']))
        requests = [unpack_request(await peer.pull.recv_multipart()) for _ in range(2)]
        forged = np.array([[666.0]], dtype=np.float32)
        for req in requests:
            for topic in (req.identity + b'-mallory', req.identity + b'x\x00'):
                await peer.xpub.send_multipart(pack_result(topic, req.req_id, forged, [['stolen']]))
        one, two = (np.array([[float(r.payload.strip(b'[]"'))]], dtype=np.float32) for r in requests)
        await peer.xpub.send_multipart(pack_result(requests[0].identity, requests[0].req_id, one, None))
        await peer.xpub.send_multipart(pack_result(reply_topic(requests[1].identity, b'key'), requests[1].req_id,
                                                   two, None))
        replies = await asyncio.gather(first, second)
        assert sorted(float(r.array[0, 0]) for r in replies) == [1.0, 2.0]
        assert all(r.tokens is None for r in replies)
        status = backend.client_status()
        assert status['num_foreign_reply'] == 4 and status['num_reply'] == 2

    run(check)
