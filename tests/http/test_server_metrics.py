"""The server's own metrics on /metrics, read with prometheus_client's parser, after mixed traffic:
ZeroMQ clients and HTTP callers, answered requests, busy refusals (the worker frozen, the queue
full) and bad requests (over the server's request size) through each door. Every request histogram
counts exactly the requests sent through its door, the model-call histograms every row computed,
and SHOW_STATUS over ZeroMQ carries the same figures beside the 1.10 keys. Also: a killed worker
shows as lost and restarted, the dashboard in headless Chromium shows the figures and each worker's
state, and docs/monitoring.md names exactly the metrics a scrape has. Real servers on the fake
engine, with their proxy.
"""
from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator
from prometheus_client.parser import text_string_to_metric_families

from bert_serving.client.errors import BertServerBusyError, BertServerError

from http_support import HTTP_TIMEOUT, http

pytestmark = [pytest.mark.e2e]

MAX_QUEUE_ROWS = 10
MAX_REQUEST_BYTES = 20_000
TOO_BIG = 'x' * (MAX_REQUEST_BYTES + 1000)  # refused by the server as a bad request, not by the proxy
UI_TIMEOUT_MS = 20000
KEYS_1_10 = ('statistic', 'num_worker', 'ready', 'model_dir', 'max_seq_len', 'pooling_strategy', 'server_version')


@pytest.fixture(scope='module')
def served(launch_http):
    flags = ['-num_worker', '1', '-max_queue_rows', str(MAX_QUEUE_ROWS), '-heartbeat_timeout', '60']
    with launch_http(None, flags, max_request_bytes=MAX_REQUEST_BYTES) as running:
        yield running


def _families(url: str) -> dict:
    status, headers, text = http('GET', url + '/metrics')
    assert status == 200 and headers['Content-Type'].startswith('text/plain')
    return {f.name: f for f in text_string_to_metric_families(text)}


def _samples(family, suffix: str, **labels) -> list:
    """The values of a family's samples named ``<family>suffix`` whose labels include ``labels``."""
    return [s.value for s in family.samples if s.name == family.name + suffix
            and all(s.labels.get(k) == v for k, v in labels.items())]


def _count(family, **labels) -> float:
    return sum(_samples(family, '_count', **labels))


class Scrapes:
    """Two scrapes of /metrics; ``count``, ``sum`` and ``total`` give what rose between them."""

    def __init__(self, before: dict, after: dict):
        self.before, self.after = before, after

    def _rise(self, name: str, suffix: str, labels: dict) -> float:
        was = sum(_samples(self.before[name], suffix, **labels)) if name in self.before else 0
        return sum(_samples(self.after[name], suffix, **labels)) - was

    def count(self, name: str, **labels) -> float:
        return self._rise(name, '_count', labels)

    def sum(self, name: str, **labels) -> float:
        return self._rise(name, '_sum', labels)

    def total(self, name: str, **labels) -> float:
        return self._rise(name, '_total', labels)


def _worker_pid(running) -> int:
    [pid] = [p.pid for p in running.server.processes if p.name.startswith('WORKER-') and p.is_alive()]
    return pid


def _mixed_traffic(running) -> dict:
    """Sends every kind of request through both doors; returns the outcomes sent, by door."""
    sent = {('zmq', 'ok'): 0, ('http', 'ok'): 0}
    rows = {'zmq': 0, 'http': 0}
    with running.client() as bc:
        for i in range(4):
            texts = [f'zero mq sentence {i}'] * (i + 1)
            assert bc.encode(texts).shape[0] == i + 1
            sent['zmq', 'ok'] += 1
            rows['zmq'] += len(texts)
        for body, path in (({'texts': ['over http', 'two']}, '/encode'), ({'texts': ['one more']}, '/encode'),
                           ({'input': ['openai style', 'a', 'b']}, '/v1/embeddings'), ({'input': 'single'},
                                                                                       '/v1/embeddings')):
            status, _, reply = http('POST', running.url + path, body)
            assert status == 200, reply
            sent['http', 'ok'] += 1
            texts = body.get('texts', body.get('input'))
            rows['http'] += len(texts) if isinstance(texts, list) else 1
        # Bad requests: over the server's -max_request_bytes, refused by the server itself.
        with pytest.raises(BertServerError, match='exceeds the server limit'):
            bc.encode([TOO_BIG])
        status, _, reply = http('POST', running.url + '/encode', {'texts': [TOO_BIG]})
        assert status == 422 and 'exceeds the server limit' in reply['error']['message'], reply
        sent['zmq', 'bad_request'] = sent['http', 'bad_request'] = 1
        # Busy: the worker frozen, one request fills the queue, one more through each door is refused.
        filler = [f'fills the queue {i}' for i in range(MAX_QUEUE_ROWS)]
        pid = _worker_pid(running)
        os.kill(pid, signal.SIGSTOP)
        try:
            bc.encode(filler, blocking=False)
            scheduler = running.server.scheduler
            deadline = time.monotonic() + HTTP_TIMEOUT
            while scheduler.open_rows < MAX_QUEUE_ROWS:
                assert time.monotonic() < deadline, 'the filler never reached the queue'
                time.sleep(0.02)
            with running.client() as late, pytest.raises(BertServerBusyError):
                late.encode(['no room'])
            status, _, reply = http('POST', running.url + '/encode', {'texts': ['no room either']})
            assert status == 429 and 'busy' in reply['error']['message'], reply
        finally:
            os.kill(pid, signal.SIGCONT)
        sent['zmq', 'busy'] = sent['http', 'busy'] = 1
        [got] = bc.fetch_all()
        assert got.shape[0] == MAX_QUEUE_ROWS
        sent['zmq', 'ok'] += 1
        rows['zmq'] += MAX_QUEUE_ROWS
    return {'sent': sent, 'rows': rows}


def test_every_histogram_counts_the_requests_of_its_door(served):
    before = _families(served.url)
    traffic = _mixed_traffic(served)
    sent, rows = traffic['sent'], traffic['rows']
    after = _families(served.url)
    rise = Scrapes(before, after)

    duration = after['bert_server_request_duration_seconds']
    assert duration.type == 'histogram'
    for door in ('zmq', 'http'):
        assert rise.count(duration.name, door=door) == sum(n for (d, _), n in sent.items() if d == door), door
        for (d, outcome), n in sent.items():
            if d == door:
                assert rise.count(duration.name, door=door, outcome=outcome) == n, (door, outcome)
                assert rise.total('bert_server_requests', door=door, outcome=outcome) == n, (door, outcome)
        for name in ('bert_server_request_queue_seconds', 'bert_server_request_model_seconds',
                     'bert_server_request_sink_seconds'):
            assert rise.count(name, door=door) == sent[door, 'ok'], (name, door)
        assert rise.total('bert_server_encoded_sequences', door=door) == rows[door]
    # Each histogram is whole: cumulative buckets, +Inf equal to _count, a sum that is a time.
    for name in ('bert_server_request_duration_seconds', 'bert_server_request_queue_seconds',
                 'bert_server_request_model_seconds', 'bert_server_request_sink_seconds'):
        family = after[name]
        for labels in {tuple(sorted((k, v) for k, v in s.labels.items() if k != 'le')) for s in family.samples}:
            labels = dict(labels)
            buckets = _samples(family, '_bucket', **labels)
            assert buckets == sorted(buckets) and buckets[-1] == _count(family, **labels)
            assert 0 <= sum(_samples(family, '_sum', **labels)) < HTTP_TIMEOUT * max(1, _count(family, **labels))
    # The queue of the frozen worker shows: the filler waited in it for the refusals to happen.
    assert rise.sum('bert_server_request_queue_seconds', door='zmq') > 0
    # Model calls: every row answered was computed once, each input's length counted once.
    answered = rows['zmq'] + rows['http']
    assert rise.sum('bert_server_batch_rows') == answered
    assert rise.count('bert_server_input_word_pieces') == answered
    assert rise.sum('bert_server_batch_padded_tokens') >= rise.sum('bert_server_input_word_pieces') > 0
    assert rise.count('bert_server_batch_rows') == rise.count('bert_server_batch_padded_tokens') >= 1
    # Workers: ready, busy for some time, none lost or restarted.
    assert _samples(after['bert_worker_ready'], '', worker='0') == [1]
    assert _samples(after['bert_worker_busy_seconds'], '_total', worker='0')[0] >= 0
    assert 0 <= _samples(after['bert_worker_busy_ratio'], '', worker='0')[0] <= 1
    assert _samples(after['bert_server_worker_restarts'], '_total') == []
    assert _samples(after['bert_server_lost_workers'], '_total') == []


def test_server_status_over_zeromq_keeps_the_1_10_keys_and_adds_the_metrics(served):
    with served.client() as bc:
        bc.encode(['counted before the status'])
        status = bc.server_status
    for key in KEYS_1_10:
        assert key in status
    assert status['statistic']['num_data_request'] >= 1
    metrics = status['metrics']
    ok = [r['count'] for r in metrics['requests'] if (r['door'], r['outcome']) == ('zmq', 'ok')]
    assert ok and ok[0] >= 1
    minute = metrics['last_minute']
    assert minute['latency_p50'] is not None and minute['latency_p50'] <= minute['latency_p99']
    assert minute['sentences_per_second'] > 0 and minute['batch_rows_avg'] >= 1
    [worker] = status['workers']
    assert worker['state'] == 'ready' and 0 <= worker['busy_fraction'] <= 1
    assert status['num_worker_restart'] == 0 and status['lost_workers'] == status['worker_restarts'] == {}
    # The proxy's /status/server is the same reply, and /openapi.json describes it.
    _, _, document = http('GET', served.url + '/openapi.json')
    _, _, over_http = http('GET', served.url + '/status/server')
    schema = document['paths']['/status/server']['get']['responses']['200']['content']['application/json']['schema']
    validator = Draft202012Validator({**schema, 'components': document['components']})
    assert not [f'{list(e.absolute_path)}: {e.message}' for e in validator.iter_errors(over_http)]
    assert set(over_http['metrics']) == set(metrics)


def test_the_dashboard_shows_the_last_minute_and_each_worker(served, page):
    """Latency quantiles, sentences per second, queue / model / sink time, batch fill, and each
    worker's state and busy share, as a browser renders them from status/server."""
    with served.client() as bc:
        for i in range(5):
            bc.encode([f'dashboard sentence {i}', 'and a second one'])
    assert http('POST', served.url + '/encode', {'texts': ['through the proxy']})[0] == 200
    page.goto(served.url + '/')
    page.wait_for_function("document.getElementById('lat-p50').textContent !== '-'", timeout=UI_TIMEOUT_MS)

    def text(selector: str) -> str:
        return page.text_content(selector).strip()

    p50, p95, p99 = (float(text(f'#lat-{q}')) for q in ('p50', 'p95', 'p99'))
    assert 0 < p50 <= p95 <= p99
    assert float(text('#sps')) > 0 and float(text('#eps')) >= 0
    assert float(text('#time-model')) >= 0 and float(text('#time-queue')) >= 0 and float(text('#time-sink')) >= 0
    widths = page.evaluate("['queue', 'model', 'sink'].map("
                           "(n) => parseFloat(document.getElementById('bar-' + n).style.width))")
    assert sum(widths) == pytest.approx(100, abs=0.5), widths
    assert float(text('#batch-rows')) >= 1 and 0 < float(text('#batch-fill')) <= 100
    assert 0 < float(text('#padding-fill')) <= 100
    cells = [text(f'#workers tr:first-child td:nth-child({i})') for i in range(1, 7)]
    assert cells[:3] == ['WORKER-0', 'cpu', 'ready'], cells
    assert re.fullmatch(r'\d{1,3}%', cells[3]) and int(cells[4]) >= 1 and int(cells[5]) >= 1, cells


def test_the_dashboard_shows_a_local_worker_the_server_does_not_know_as_starting(served, page):
    """A lost worker's replacement has not registered yet: the server's status lists no WORKER-1
    while -num_worker says 2 (the page's status is the real one, with that changed)."""
    def one_worker_short(route):
        status = route.fetch().json()
        status['num_worker'] = 2
        status['worker_devices'] = {**status['worker_devices'], 'WORKER-1': 'cpu'}
        route.fulfill(json=status)

    page.route('**/status/server', one_worker_short)
    page.goto(served.url + '/')
    page.wait_for_selector('#workers tr:nth-child(2)', timeout=UI_TIMEOUT_MS)
    rows = [[page.text_content(f'#workers tr:nth-child({r}) td:nth-child({c})').strip() for c in (1, 2, 3, 4)]
            for r in (1, 2)]
    assert rows == [['WORKER-0', 'cpu', 'ready', rows[0][3]], ['WORKER-1', 'cpu', 'starting', '0%']], rows


def test_a_killed_worker_shows_as_lost_and_restarted_then_ready_again(launch_http):
    with launch_http(None, ['-num_worker', '1']) as running:
        os.kill(_worker_pid(running), signal.SIGKILL)
        deadline = time.monotonic() + HTTP_TIMEOUT
        while True:
            families = _families(running.url)
            lost = _samples(families['bert_server_lost_workers'], '_total', reason='died')
            restarts = _samples(families['bert_server_worker_restarts'], '_total', reason='died')
            ready = _samples(families['bert_worker_ready'], '', worker='0')
            if lost == [1] and restarts == [1] and ready == [1]:
                break
            assert time.monotonic() < deadline, (lost, restarts, ready)
            time.sleep(0.1)
        with running.client() as bc:
            assert bc.encode(['served by the new worker']).shape[0] == 1


DOC = Path(__file__).resolve().parents[2] / 'docs' / 'monitoring.md'


def _family_name(metric: str) -> str:
    """The family a metric or sample name belongs to (the parser names counters without _total)."""
    return re.sub(r'_(total|bucket|count|sum)$', '', metric)


def test_the_monitoring_doc_names_every_server_metric_and_its_alerts_use_real_ones(served):
    """docs/monitoring.md's table against a real scrape, both ways, and its YAML (the scrape config
    and the alert rules) parses, with every metric an alert reads on the scrape."""
    with served.client() as bc:
        bc.encode(['so that every family has a sample'])
    scraped = {name for name in _families(served.url) if name.startswith(('bert_server_', 'bert_worker_'))}
    text = DOC.read_text(encoding='utf-8')
    rows = [line for line in text.splitlines() if line.startswith('| `bert_')]
    documented = {_family_name(name) for row in rows for name in re.findall(r'`(bert_[a-z_]+)`', row.split('|')[1])}
    assert documented == scraped, (documented - scraped, scraped - documented)
    config, rules = (yaml.safe_load(block) for block in re.findall(r'```yaml\n(.*?)```', text, flags=re.S))
    assert config['scrape_configs'][0]['job_name'] == 'bert-serving'
    alerts = {rule['alert']: rule['expr'] for rule in rules['groups'][0]['rules']}
    assert set(alerts) == {'BertWorkersDown', 'BertQueueTimeRising', 'BertErrorRate'}
    for expr in alerts.values():
        used = {_family_name(name) for name in re.findall(r'\bbert_[a-z_]+', expr)}
        assert used and used <= scraped, used - scraped
