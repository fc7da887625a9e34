"""The pure parts of ``benchmarks.compare``: goals, report, percentiles, vector agreement.

The measurements themselves need the real model and minutes of CPU; ``make bench`` runs them.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # benchmarks/ is a top-level folder, not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks.compare import cosine_agreement, evaluate_goals, format_report, percentiles_ms  # noqa: E402

FIGURES = {
    'clients': 32, 'a_sentences_per_s': 100.0, 'b_sentences_per_s': 150.0, 'c_sentences_per_s': 60.0,
    'service_latency': {'p50_ms': 8.0, 'p99_ms': 20.0}, 'st_latency': {'p50_ms': 10.0, 'p99_ms': 30.0},
    'first_start_s': 20.0, 'second_start_s': 12.0, 'min_cosine': 0.9995, 'mean_cosine': 0.9999,
    'worker_memory_after_load': {'WORKER-0 (pid 1)': {'rss_mb': 900.0, 'peak_mb': 950.0}},
    'ratio_b_over_a': 1.5, 'ratio_c_over_b': 0.4, 'ratio_d_p50': 0.5, 'ratio_d_p50_onnx': 2.5,
    'ratio_b_over_onnx': 1.3, 'max_worker_rss_mb': 900.0, 'max_other_rss_mb': 80.0,
}


def test_goals_pass_and_miss_by_their_targets():
    verdicts = {g['goal']: g['pass'] for g in evaluate_goals(FIGURES)}
    assert verdicts == {'b_over_a': True, 'c_over_b': False, 'd_p50': True, 'd_p50_onnx': False, 'b_over_onnx': True,
                        'worker_rss': True, 'other_rss': True, 'e_startup': False, 'cosine': True}


def test_a_missing_figure_is_neither_pass_nor_miss():
    figures = dict(FIGURES)
    del figures['ratio_c_over_b']
    goal = next(g for g in evaluate_goals(figures) if g['goal'] == 'c_over_b')
    assert goal['pass'] is None and goal['measured'] is None


def test_report_lists_every_figure_and_goal():
    report = format_report(FIGURES, evaluate_goals(FIGURES))
    for text in ('100 sentences/s', '150 sentences/s', '60 sentences/s', '8.0 / 20.0 ms', '10.0 / 30.0 ms',
                 '12.0 s', 'WORKER-0 900 MiB (peak 950)', 'min 0.999500', '-pooling_layer -1'):
        assert text in report
    assert report.count('PASS') == 6 and report.count('MISS') == 3


def test_percentiles_are_in_milliseconds():
    p = percentiles_ms([0.001 * i for i in range(1, 101)])
    assert p['p50_ms'] == pytest.approx(50.5)
    assert p['p99_ms'] == pytest.approx(99.01)


def test_cosine_ignores_vector_length():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 8)).astype(np.float32)
    agree = cosine_agreement(a * 3.0, a)
    assert agree['min_cosine'] == pytest.approx(1.0, abs=1e-6)
    assert cosine_agreement(a, -a)['mean_cosine'] == pytest.approx(-1.0, abs=1e-6)
