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
"""
from __future__ import annotations

from typing import Optional

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ['ProxyMetrics', 'ServerStatusCollector', 'CONTENT_TYPE_LATEST']

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


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
