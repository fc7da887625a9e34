"""Prometheus metrics of the proxy, and of the server as its SHOW_STATUS reports it.

Proxy metrics (counted here)::

    bert_http_requests_total{endpoint, method, code}      HTTP requests answered
    bert_http_request_duration_seconds{endpoint}          time to answer (histogram)
    bert_http_requests_in_flight                          encoding requests being served
    bert_http_sequences_total{endpoint}                   texts encoded through the proxy

Server metrics (read from SHOW_STATUS at each scrape)::

    bert_server_up                                        1 if the server answered the scrape
    bert_server_workers / bert_server_ready_workers       workers configured / with the model loaded
    bert_server_queued_pieces                             request pieces waiting for a worker
    bert_server_data_requests_total                       data requests the server received
    bert_server_sequences_total                           sequences the server received
    bert_worker_batches_total{worker}                     batches handed to each worker
    bert_worker_sequences_total{worker}                   sequences handed to each worker

Where each data request's time goes, ZeroMQ and HTTP alike (the ``metrics`` block of SHOW_STATUS,
kept by the sink: ``pipeline/request_metrics.py``; door is ``zmq`` or ``http``)::

    bert_server_request_duration_seconds{door, outcome}   received -> reply sent (histogram)
    bert_server_request_queue_seconds{door}               received -> the model started on it (ok requests)
    bert_server_request_model_seconds{door}               model calls that computed it (ok requests)
    bert_server_request_sink_seconds{door}                its last piece -> its reply sent (ok requests)
    bert_server_requests_total{door, outcome}             data requests by outcome (ok, busy, bad_request,
                                                          timeout, worker_lost, shutting_down, failed)
    bert_server_encoded_sequences_total{door}             inputs answered with embeddings
    bert_server_batch_rows                                inputs per model call (histogram)
    bert_server_batch_padded_tokens                       word-piece rows computed per model call, padding included
    bert_server_input_word_pieces                         word pieces per input (histogram)
    bert_server_worker_restarts_total{reason}             workers replaced, by why the one before was lost
    bert_server_lost_workers_total{reason}                workers lost: died, silent, hung, results_lost, ...
    bert_worker_ready{worker}                             1 if the worker has loaded the model, else 0
    bert_worker_busy_seconds_total{worker}                seconds the worker spent on batches (rate = busy share)
    bert_worker_busy_ratio{worker}                        its busy share over the last minute
"""
from __future__ import annotations

from typing import Optional

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

__all__ = ['ProxyMetrics', 'ServerStatusCollector', 'CONTENT_TYPE_LATEST']

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# The help of the server's histograms (SHOW_STATUS "metrics"."histograms"), by their name there.
HISTOGRAM_HELP = {
    'request_duration_seconds': 'Time from a data request reaching the server to its reply leaving it, by door '
                                'and outcome',
    'request_queue_seconds': 'Time a request waited before the model started on it (answered requests)',
    'request_model_seconds': 'Time of the model calls that computed a request (answered requests)',
    'request_sink_seconds': 'Time from the last piece of a request to its reply leaving the sink (answered requests)',
    'batch_rows': 'Inputs per model call',
    'batch_padded_tokens': 'Word-piece rows the dense layers computed per model call, padding included',
    'input_word_pieces': 'Word pieces per input, [CLS] and [SEP] included',
}


def _histogram(name: str, block: dict) -> HistogramMetricFamily:
    """A Prometheus histogram from one entry of SHOW_STATUS "metrics"."histograms"."""
    labels = list(block.get('labels') or [])
    family = HistogramMetricFamily(f'bert_server_{name}', HISTOGRAM_HELP.get(name, name.replace('_', ' ')),
                                   labels=labels)
    bounds = block.get('buckets') or []
    for series in block.get('series') or []:
        counts, cumulative, buckets = series.get('counts') or [], 0, []
        for bound, n in zip(bounds, counts):
            cumulative += n
            buckets.append((floatToGoString(bound), cumulative))
        buckets.append(('+Inf', sum(counts)))
        family.add_metric([str(series.get('labels', {}).get(label, '')) for label in labels], buckets,
                          sum_value=series.get('sum', 0))
    return family


class ServerStatusCollector:
    """Turns the last SHOW_STATUS reply into metrics; ``update`` it right before each scrape."""

    def __init__(self):
        self.status: Optional[dict] = None

    def update(self, status: Optional[dict]) -> None:
        self.status = status

    def collect(self):
        status = self.status
        yield GaugeMetricFamily('bert_server_up', 'Whether the server answered SHOW_STATUS for this scrape',
                                value=0 if status is None else 1)
        if status is None:
            return
        statistic = status.get('statistic') or {}
        yield GaugeMetricFamily('bert_server_workers', 'Worker processes configured (-num_worker)',
                                value=status.get('num_worker') or 0)
        yield GaugeMetricFamily('bert_server_ready_workers', 'Workers that have loaded the model',
                                value=status.get('num_ready_worker') or 0)
        yield GaugeMetricFamily('bert_server_queued_pieces', 'Request pieces waiting for a worker',
                                value=status.get('num_queued_piece') or 0)
        yield CounterMetricFamily('bert_server_data_requests', 'Data requests received by the server',
                                  value=statistic.get('num_data_request', 0))
        yield CounterMetricFamily('bert_server_sequences', 'Sequences received by the server',
                                  value=statistic.get('num_total_seq', 0))
        for name, key, doc in (('bert_worker_batches', 'batches_per_worker', 'Batches handed to each worker'),
                               ('bert_worker_sequences', 'sequences_per_worker', 'Sequences handed to each worker')):
            family = CounterMetricFamily(name, doc, labels=['worker'])
            for worker, count in sorted((status.get(key) or {}).items()):
                family.add_metric([str(worker)], count)
            yield family
        yield from self._request_metrics(status.get('metrics') or {})
        yield from self._worker_metrics(status)

    @staticmethod
    def _request_metrics(metrics: dict):
        for name, block in sorted((metrics.get('histograms') or {}).items()):
            yield _histogram(name, block)
        requests = CounterMetricFamily('bert_server_requests', 'Data requests by door (zmq, http) and outcome',
                                       labels=['door', 'outcome'])
        for row in metrics.get('requests') or []:
            requests.add_metric([str(row.get('door')), str(row.get('outcome'))], row.get('count', 0))
        yield requests
        encoded = CounterMetricFamily('bert_server_encoded_sequences', 'Inputs answered with embeddings, by door',
                                      labels=['door'])
        for door, count in sorted((metrics.get('sentences') or {}).items()):
            encoded.add_metric([str(door)], count)
        yield encoded

    @staticmethod
    def _worker_metrics(status: dict):
        for name, key, doc in (('bert_server_lost_workers', 'lost_workers', 'Workers lost, by reason'),
                               ('bert_server_worker_restarts', 'worker_restarts',
                                'Workers replaced, by the reason the one before was lost')):
            family = CounterMetricFamily(name, doc, labels=['reason'])
            for reason, count in sorted((status.get(key) or {}).items()):
                family.add_metric([str(reason)], count)
            yield family
        ready = GaugeMetricFamily('bert_worker_ready', '1 if the worker has loaded the model, 0 while it loads',
                                  labels=['worker'])
        busy = CounterMetricFamily('bert_worker_busy_seconds', 'Seconds the worker spent on batches since it started',
                                   labels=['worker'])
        ratio = GaugeMetricFamily('bert_worker_busy_ratio', 'Share of the last minute the worker spent on batches',
                                  labels=['worker'])
        for w in status.get('workers') or []:
            worker = [str(w.get('label', w.get('name')))]
            ready.add_metric(worker, 1 if w.get('state') == 'ready' else 0)
            busy.add_metric(worker, w.get('busy_seconds') or 0)
            ratio.add_metric(worker, w.get('busy_fraction') or 0)
        yield from (ready, busy, ratio)


class ProxyMetrics:
    """The proxy's metrics, in a registry of their own (not the process-global one)."""

    def __init__(self):
        # The *_created series double every counter's lines and say nothing a scraper needs.
        disable_created_metrics()
        self.registry = CollectorRegistry()
        self.requests = Counter('bert_http_requests', 'HTTP requests answered, by endpoint, method and status code',
                                ['endpoint', 'method', 'code'], registry=self.registry)
        self.latency = Histogram('bert_http_request_duration_seconds', 'Time to answer an HTTP request',
                                 ['endpoint'], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge('bert_http_requests_in_flight',
                               'Encoding requests being served (at most -http_max_connect)', registry=self.registry)
        self.sequences = Counter('bert_http_sequences', 'Texts encoded through the proxy', ['endpoint'],
                                 registry=self.registry)
        self.server = ServerStatusCollector()
        self.registry.register(self.server)

    def observe(self, endpoint: str, method: str, code: int, seconds: float) -> None:
        self.requests.labels(endpoint, method, str(code)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def render(self, status: Optional[dict]) -> bytes:
        """The text exposition of every metric; ``status`` is a fresh SHOW_STATUS reply or None."""
        self.server.update(status)
        return generate_latest(self.registry)
