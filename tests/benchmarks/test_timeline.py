"""``python -m benchmarks.timeline`` against a real server on ``-engine fake``: the stages come from
the server's own request metrics and add up to the client's mean round trip. No timing is asserted."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # benchmarks/ is a top-level folder, not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks import timeline  # noqa: E402

pytestmark = [pytest.mark.e2e]


def _status(duration, queue, model, sink, count):
    series = lambda total, outcome=True: [{'labels': {'door': 'zmq', **({'outcome': 'ok'} if outcome else {})},
                                           'sum': total, 'count': count},
                                          {'labels': {'door': 'http', **({'outcome': 'ok'} if outcome else {})},
                                           'sum': 99.0, 'count': 7}]
    return {'metrics': {'histograms': {
        'request_duration_seconds': {'series': series(duration)},
        'request_queue_seconds': {'series': series(queue, False)},
        'request_model_seconds': {'series': series(model, False)},
        'request_sink_seconds': {'series': series(sink, False)}}}}


def test_stage_means_are_the_zeromq_deltas_over_the_requests_between_two_replies():
    before = _status(1.0, 0.1, 0.5, 0.05, 10)
    after = _status(1.8, 0.14, 1.1, 0.07, 50)
    means = timeline.server_stages(before, after)
    assert means == pytest.approx({'request_duration_seconds': 0.02, 'request_queue_seconds': 0.001,
                                   'request_model_seconds': 0.015, 'request_sink_seconds': 0.0005})


@pytest.mark.parametrize('pause', [[], ['--pause_ms', '2']], ids=['back-to-back', 'paced'])
def test_the_timeline_of_a_fake_engine_server_adds_up(tmp_path, capsys, pause):
    out = tmp_path / 'timeline.json'
    assert timeline.main(['--requests', '15', '--no_in_process', '--output', str(out), '-engine', 'fake', '-cpu']
                         + pause) == 0
    table = capsys.readouterr().out
    assert ('each after 2 ms idle' in table) == bool(pause)
    for stage in ('client + its two hops', 'server: queue', 'server: model', 'server: worker hops', 'server: sink'):
        assert stage in table, table
    doc = json.loads(out.read_text())
    stages = doc['stages_mean_s']
    assert all(math.isfinite(v) for v in stages.values()), stages
    parts = sum(v for k, v in stages.items() if k.startswith('  '))
    assert parts == pytest.approx(stages['round trip (client)'])
    assert stages['  server: model'] > 0 and doc['requests'] == 15
    assert doc['pause_ms'] == (2.0 if pause else 0.0)
