"""The pure parts of ``make bench`` (``benchmarks.compare``, ``report``, ``timing``): goals, ratios,
the summary table and the report, percentiles, vector agreement.

The measurements themselves need the real model and minutes of CPU; ``make bench`` runs them.
(``test_encode_command.py`` runs the pieces that need only a server, on the fake engine.)
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # benchmarks/ is a top-level folder, not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks.compare import SERVER_FLAGS, cosine_agreement, derive_ratios  # noqa: E402
from benchmarks.report import GOALS, evaluate_goals, format_report, summary_rows  # noqa: E402
from benchmarks.timing import percentiles_ms  # noqa: E402


def measured(**overrides) -> dict:
    """The figures of one whole run, as ``main`` collects them before ``derive_ratios``."""
    figures = {
        'clients': 32, 'sentences': 4096, 'num_worker': 1, 'onnx_version': '1.32.0',
        'a_sentences_per_s': 100.0, 'st_latency': {'p50_ms': 10.0, 'p99_ms': 30.0},
        'onnx_sentences_per_s': 125.0, 'onnx_latency': {'p50_ms': 4.0, 'p99_ms': 12.0}, 'onnx_min_cosine': 0.99999,
        'onnx_int8_sentences_per_s': 200.0, 'onnx_int8_latency': {'p50_ms': 2.0, 'p99_ms': 6.0},
        'onnx_int8_min_cosine': 0.921, 'onnx_int8_mean_cosine': 0.98,
        'b_sentences_per_s': 150.0, 'c_sentences_per_s': 60.0, 'g_http_sentences_per_s': 48.0,
        'service_latency': {'p50_ms': 8.0, 'p99_ms': 20.0},
        'first_start_s': 20.0, 'second_start_s': 12.0, 'min_cosine': 0.9995, 'mean_cosine': 0.9999,
        'worker_memory_after_load': {'WORKER-0 (pid 1)': {'rss_mb': 900.0, 'peak_mb': 950.0}},
        'other_memory_after_load': {'SERVER (pid 2)': {'rss_mb': 70.0, 'peak_mb': 72.0},
                                    'SINK (pid 3)': {'rss_mb': 80.0, 'peak_mb': 81.0}},
        'encode_cli_sentences_per_s': 140.0, 'encode_cli_b_sentences_per_s': 160.0,
        'ratio_encode_cli_over_b': 0.875, 'encode_cli_max_abs_diff': 2.5e-7,
        'encode_cli_command': 'bert-serving-encode', 'encode_cli_worker_cpu_s': 11.5, 'encode_cli_b_worker_cpu_s': 11.25,
        'bf16_start_s': 30.0, 'bf16_b_sentences_per_s': 320.0, 'bf16_c_sentences_per_s': 160.0,
        'bf16_latency': {'p50_ms': 1.9, 'p99_ms': 9.0}, 'bf16_min_cosine': 0.99985, 'bf16_mean_cosine': 0.99996,
        'bf16_worker_memory': {'WORKER-0 (pid 4)': {'rss_mb': 760.0, 'peak_mb': 800.0, 'anon_mb': 470.0,
                                                    'file_mb': 290.0}},
        'st_latency_paced': {'p50_ms': 12.0, 'p99_ms': 31.0}, 'onnx_latency_paced': {'p50_ms': 6.0, 'p99_ms': 13.0},
        'onnx_int8_latency_paced': {'p50_ms': 3.0, 'p99_ms': 7.0},
        'service_latency_paced': {'p50_ms': 9.0, 'p99_ms': 21.0}, 'bf16_latency_paced': {'p50_ms': 4.5, 'p99_ms': 9.5},
        'floor_latency': {'p50_ms': 1.5, 'p99_ms': 3.0}, 'floor_latency_paced': {'p50_ms': 2.5, 'p99_ms': 4.0},
        'floor_c_sentences_per_s': 2500.0,
        'alone_latency': {'p50_ms': 5.0, 'p99_ms': 7.0}, 'alone_c_sentences_per_s': 140.0,
        'alone_one_call_sentences_per_s': 160.0, 'bf16_alone_latency': {'p50_ms': 1.5, 'p99_ms': 2.5},
        'bf16_alone_c_sentences_per_s': 224.0, 'bf16_alone_one_call_sentences_per_s': 340.0,
    }
    figures.update(overrides)
    return figures


FIGURES = derive_ratios(measured())


def test_ratios_are_derived_from_the_figures():
    f = FIGURES
    assert f['ratio_b_over_a'] == pytest.approx(1.5)
    assert f['ratio_c_over_b'] == pytest.approx(0.4)
    assert f['ratio_d_p50'] == pytest.approx(0.8)
    assert f['ratio_d_p50_onnx'] == pytest.approx(2.0)
    assert f['ratio_b_over_onnx'] == pytest.approx(1.2)
    assert f['ratio_g_over_c'] == pytest.approx(0.8)
    assert f['ratio_bf16_over_int8'] == pytest.approx(1.6)
    assert f['ratio_bf16_p50_over_int8'] == pytest.approx(0.95)
    assert f['ratio_bf16_c_over_b'] == pytest.approx(0.5)
    assert (f['max_worker_rss_mb'], f['max_other_rss_mb'], f['bf16_max_worker_rss_mb']) == (900.0, 80.0, 760.0)


def test_goals_pass_and_miss_by_their_targets():
    verdicts = {g['goal']: g['pass'] for g in evaluate_goals(FIGURES)}
    assert verdicts == {'b_over_a': True, 'c_over_b': False, 'd_p50': False, 'd_p50_onnx': False, 'b_over_onnx': True,
                        'worker_rss': False, 'other_rss': True, 'e_startup': False, 'cosine': True,
                        'bf16_over_int8': True, 'bf16_p50_int8': True, 'bf16_cosine': True, 'bf16_c_over_b': False,
                        'b_int8': None, 'd_p50_int8': None,  # a float32 first server
                        'encode_cli': False, 'encode_cli_vectors': True}


@pytest.mark.parametrize('figure, value, goal, passed', [
    ('bf16_b_sentences_per_s', 299.0, 'bf16_over_int8', False),  # 1.495 < 1.5
    ('bf16_b_sentences_per_s', 300.0, 'bf16_over_int8', True),  # exactly the target passes
    ('bf16_latency', {'p50_ms': 2.01, 'p99_ms': 9.0}, 'bf16_p50_int8', False),
    ('bf16_min_cosine', 0.9989, 'bf16_cosine', False),
    ('ratio_encode_cli_over_b', 0.95, 'encode_cli', True),
    ('encode_cli_max_abs_diff', 2e-5, 'encode_cli_vectors', False),
    # issue 21's targets: 0.8, 0.4, 1.2 and 700 MiB, each passing at its edge
    ('c_sentences_per_s', 120.0, 'c_over_b', True),
    ('service_latency', {'p50_ms': 4.0, 'p99_ms': 9.0}, 'd_p50', True),
    ('service_latency', {'p50_ms': 4.8, 'p99_ms': 9.0}, 'd_p50_onnx', True),
    ('service_latency', {'p50_ms': 4.9, 'p99_ms': 9.0}, 'd_p50_onnx', False),
    ('worker_memory_after_load', {'WORKER-0 (pid 1)': {'rss_mb': 700.0, 'peak_mb': 720.0}}, 'worker_rss', True),
    ('bf16_c_sentences_per_s', 256.0, 'bf16_c_over_b', True),
])
def test_new_goals_at_their_edges(figure, value, goal, passed):
    figures = derive_ratios(measured(**{figure: value}))
    assert {g['goal']: g['pass'] for g in evaluate_goals(figures)}[goal] is passed


def test_skipped_peers_leave_their_goals_and_cells_open():
    skipped = ('onnx_sentences_per_s', 'onnx_latency', 'onnx_min_cosine', 'onnx_int8_sentences_per_s',
               'onnx_int8_latency', 'onnx_int8_min_cosine', 'onnx_int8_mean_cosine', 'bf16_start_s',
               'bf16_b_sentences_per_s', 'bf16_c_sentences_per_s', 'bf16_latency', 'bf16_min_cosine',
               'bf16_mean_cosine', 'bf16_worker_memory', 'encode_cli_sentences_per_s', 'encode_cli_b_sentences_per_s',
               'ratio_encode_cli_over_b', 'encode_cli_max_abs_diff', 'encode_cli_command', 'encode_cli_worker_cpu_s',
               'encode_cli_b_worker_cpu_s')
    figures = derive_ratios({k: v for k, v in measured().items() if k not in skipped})
    assert not {'ratio_bf16_over_int8', 'ratio_bf16_p50_over_int8', 'ratio_b_over_onnx', 'bf16_max_worker_rss_mb'} \
        & set(figures)
    goals = {g['goal']: g for g in evaluate_goals(figures)}
    for key in ('d_p50_onnx', 'b_over_onnx', 'bf16_over_int8', 'bf16_p50_int8', 'bf16_cosine', 'bf16_c_over_b',
                'encode_cli', 'encode_cli_vectors'):
        assert goals[key]['pass'] is None and goals[key]['measured'] is None, key
    rows = summary_rows(figures)
    assert rows[1][1:5] == ['n/a', '-', 'n/a', 'n/a'] and rows[2][1:5] == ['n/a', '-', 'n/a', 'n/a']
    assert rows[4][1:] == ['n/a'] * 5
    report = format_report(figures, evaluate_goals(figures))
    assert report.count('PASS') + report.count('MISS') == len(GOALS) - 10  # and the two of ARGS -fp16


def test_summary_has_one_row_per_peer_with_its_reference():
    rows = summary_rows(FIGURES)
    assert [r[0] for r in rows] == [
        '(a) sentence-transformers, batch 32', '(f) ONNX Runtime fp32, sorted batch 32',
        '(f) ONNX Runtime int8, sorted batch 32', '(b-d) ours fp32, 1 worker', '(j) ours -bf16, 1 worker',
        '(k) service floor: -engine fake, no model']
    assert rows[0][1:] == ['100', '-', '10.00', 'reference', '-']
    assert rows[1][1:] == ['125', '-', '4.00', '0.999990 (vs (a))', '-']
    assert rows[2][1:] == ['200', '-', '2.00', '0.921000 (vs ORT fp32)', '-']
    assert rows[3][1:] == ['150', '60 (0.40)', '8.00', '0.999500 (vs (a))', '900']
    assert rows[4][1:] == ['320', '160 (0.50)', '1.90', '0.999850 (vs ours fp32)', '760']
    assert rows[5][1:] == ['-', '2500', '1.50', '-', '-']
    assert summary_rows(dict(FIGURES, num_worker=2))[3][0] == '(b-d) ours fp32, 2 workers'


def test_report_opens_with_the_summary_then_the_goals_then_the_details():
    report = format_report(FIGURES, evaluate_goals(FIGURES))
    blocks = report.split('\n\n')
    assert re.split(r'\s{2,}', blocks[0].splitlines()[0].strip()) == [
        'one client sent/s', '32 clients x 1 sentence sent/s (/ one client)', 'single p50 ms', 'min cosine vs fp32',
        'worker RSS MiB']
    assert len(blocks[0].splitlines()) == 2 + 6  # header, rule, five peers and the service floor
    assert blocks[1].startswith('ONNX Runtime 1.32.0; int8 = quantize_dynamic, QInt8 weights. Min cosine over the '
                                '4096 sentences')
    assert blocks[2].startswith('goal ') and len(blocks[2].splitlines()) == 2 + len(GOALS)
    assert blocks[3].startswith('(l) column: the same ratio with the model alone')
    assert blocks[4].startswith('figure ')
    assert blocks[5].startswith('Server: -max_seq_len 128')


def test_report_lists_every_figure_and_goal():
    report = format_report(FIGURES, evaluate_goals(FIGURES))
    details = report.split('\n\n')[4]
    for text in ('100 sentences/s', '125 sentences/s', '200 sentences/s', '150 sentences/s', '60 sentences/s',
                 '48 sentences/s', '140 sentences/s', '160 sentences/s', '320 sentences/s', '8.0 / 20.0 ms',
                 '10.0 / 30.0 ms', '4.0 / 12.0 ms', '2.0 / 6.0 ms', '1.9 / 9.0 ms', '12.0 s', '30.0 s',
                 'WORKER-0 900 MiB (peak 950)', 'WORKER-0 760 MiB (peak 800, anonymous 470, files 290)',
                 'SINK 80 MiB (peak 81)',
                 'min 0.999500', 'min 0.921000, mean 0.980000', 'min 0.999850, mean 0.999960', '2.5e-07',
                 '(i) bert-serving-encode, 4096 lines of a file', '11.50 / 11.25 s'):
        assert text in details, text
    assert report.count('PASS') == 8 and report.count('MISS') == 7


def test_goal_values_keep_the_digits_that_decide_them():
    report = format_report(FIGURES, evaluate_goals(FIGURES))
    goals = {line.split('  ')[0]: line for line in report.split('\n\n')[2].splitlines()}
    assert '0.999850' in goals['(j) -bf16 vectors: min cosine vs our fp32']
    assert '2.5e-07' in goals['(i) bert-serving-encode vectors: max |diff| vs one encode']
    assert '1.600' in goals['(j) -bf16 one client / ONNX Runtime int8 batch 32']
    assert '0.875' in goals['(i) bert-serving-encode / one encode of the same lines']


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


def test_worker_memory_splits_rss_into_anonymous_and_file_pages():
    import os

    from benchmarks.service_peer import worker_memory_mb

    (name, m), = worker_memory_mb(None, [('SELF', os.getpid())]).items()
    assert name == f'SELF (pid {os.getpid()})'
    assert m['anon_mb'] > 0 and m['file_mb'] > 0 and m['peak_mb'] >= m['rss_mb']
    assert m['anon_mb'] + m['file_mb'] <= m['rss_mb'] + 0.01  # VmRSS = RssAnon + RssFile + RssShmem


@pytest.mark.parametrize('flags, precision', [([], 'fp32'), (['-fp16'], '-fp16'),
                                              (['-num_worker', '2', '-bf16'], '-bf16'), (['-bf'], '-bf16')])
def test_the_first_server_is_named_by_its_precision_and_reduced_precision_meets_int8(flags, precision):
    """make bench ARGS=-fp16 runs the first server with -fp16: its row says so, and its throughput and
    p50 are put beside ONNX Runtime int8's (issue 21, goal 3); a float32 server leaves those open."""
    from benchmarks.compare import server_precision
    from bert_serving.server.args import get_args_parser

    assert server_precision(get_args_parser().parse_args(SERVER_FLAGS + flags)) == precision  # as the server reads them
    figures = derive_ratios(dict(measured(), precision=precision, gemm_gflops=300.0, tokens=90000, flop_per_token=2e7))
    goals = {g['goal']: g for g in evaluate_goals(figures)}
    assert summary_rows(figures)[3][0] == f'(b-d) ours {precision}, 1 worker'
    if precision == 'fp32':
        assert goals['b_int8']['measured'] is None and goals['d_p50_int8']['pass'] is None
    else:
        assert goals['b_int8']['measured'] == pytest.approx(150 / 200)
        assert goals['d_p50_int8']['measured'] == pytest.approx(8.0 / 2.0) and goals['d_p50_int8']['pass'] is False
    report = format_report(figures, evaluate_goals(figures))
    assert f'vectors: ours {precision} vs sentence-transformers' in report
    # the machine's float32 GEMM rate says nothing of a reduced-precision server's
    rate = r'\d+ GFLOP/s' if precision == 'fp32' else 'n/a'
    assert re.search(r'\(h\) \(b\) service, dense-layer FLOP rate +' + rate, report)


def test_paced_latency_is_reported_beside_the_back_to_back_one_and_is_no_goal():
    """Each peer's p50 is also taken with every call after PAUSE_SECONDS idle (as a search box sends
    them): the report prints them and their ratios, and the goals still read the back-to-back ones."""
    f = FIGURES
    assert f['ratio_d_p50_paced'] == pytest.approx(9.0 / 12.0)
    assert f['ratio_d_p50_onnx_paced'] == pytest.approx(9.0 / 6.0)
    assert f['ratio_bf16_p50_over_int8_paced'] == pytest.approx(4.5 / 3.0)
    assert not {g['figure'] for g in evaluate_goals(f)} & {k for k in f if 'paced' in k}
    report = format_report(f, evaluate_goals(f))
    assert re.search(r'after 10 ms idle: service / sentence-transformers +9\.0 / 21\.0 ms / 12\.0 / 31\.0 ms\n', report)
    assert re.search(r'after 10 ms idle: ONNX Runtime fp32 / int8 +6\.0 / 13\.0 ms / 3\.0 / 7\.0 ms\n', report)
    assert re.search(r'-bf16 / ONNX Runtime int8 +0\.75, 1\.50, 1\.50\n', report)
    skipped = derive_ratios({k: v for k, v in measured().items() if 'paced' not in k})
    assert 'ratio_d_p50_onnx_paced' not in skipped
    assert re.search(r'ONNX Runtime int8 +n/a, n/a, n/a\n', format_report(skipped, evaluate_goals(skipped)))


def test_the_service_floor_splits_each_p50_into_model_and_pipeline_and_is_no_goal():
    """(k): the model's share of each p50 is the p50 minus the floor's, and each p50 goal leaves the
    model its target times the peer's p50 minus the floor; a run without (k) has none of them."""
    f = FIGURES
    assert f['model_share_d_ms'] == pytest.approx(8.0 - 1.5)
    assert f['model_share_bf16_ms'] == pytest.approx(1.9 - 1.5)
    assert f['model_budget_d_onnx_ms'] == pytest.approx(1.2 * 4.0 - 1.5)
    assert f['model_budget_d_st_ms'] == pytest.approx(0.4 * 10.0 - 1.5)
    assert f['model_budget_bf16_int8_ms'] == pytest.approx(1.0 * 2.0 - 1.5)
    goals = evaluate_goals(f)
    assert not {g['figure'] for g in goals} & {k for k in f if k.startswith(('floor', 'model_'))}
    report = format_report(f, goals)
    assert re.search(r'\(k\) service floor \(-engine fake\) p50 / p99: back to back; each call after 10 ms '
                     r'+1\.5 / 3\.0 ms; 2\.5 / 4\.0 ms\n', report)
    assert re.search(r'\(k\) service floor, 32 clients, 1 sentence/request +2500 sentences/s\n', report)
    assert re.search(r"model's share of the p50 \(p50 - floor\): ours; -bf16 +6\.50 ms; 0\.40 ms\n", report)
    assert re.search(r'1\.2 x ONNX Runtime fp32; 0\.4 x sentence-transformers; 1 x int8 +3\.30 ms; 2\.50 ms; 0\.50 ms\n',
                     report)
    skipped = derive_ratios({k: v for k, v in measured().items() if not k.startswith('floor')})
    assert not {k for k in skipped if k.startswith('model_')}
    assert summary_rows(skipped)[5][1:] == ['-', 'n/a', 'n/a', '-', '-']
    assert re.search(r'\(k\) service floor, 32 clients, 1 sentence/request +n/a\n',
                     format_report(skipped, evaluate_goals(skipped)))


def test_the_model_alone_bounds_the_service_goals_and_marks_those_out_of_reach():
    """(l): each bound is the goal's ratio with the model alone's figure in the service's place; a goal
    whose bound misses its target is marked out of reach, one whose bound meets it is a plain miss,
    and a goal without a bound shows none."""
    f = FIGURES
    assert f['bound_c_over_b'] == pytest.approx(140.0 / 150.0)
    assert f['bound_bf16_c_over_b'] == pytest.approx(224.0 / 320.0)
    assert f['bound_d_p50'] == pytest.approx(5.0 / 10.0)
    assert f['bound_d_p50_onnx'] == pytest.approx(5.0 / 4.0)
    assert f['bound_bf16_p50_over_int8'] == pytest.approx(1.5 / 2.0)
    goals = {g['goal']: g for g in evaluate_goals(f)}
    assert (goals['c_over_b']['pass'], goals['c_over_b']['reachable']) == (False, True)  # 0.40; bound 0.93
    assert (goals['d_p50']['pass'], goals['d_p50']['reachable']) == (False, False)  # 0.8; bound 0.5 > 0.4
    assert (goals['d_p50_onnx']['pass'], goals['d_p50_onnx']['reachable']) == (False, False)  # bound 1.25 > 1.2
    assert (goals['bf16_p50_int8']['pass'], goals['bf16_p50_int8']['reachable']) == (True, True)
    assert (goals['bf16_c_over_b']['pass'], goals['bf16_c_over_b']['reachable']) == (False, False)  # bound 0.70
    assert goals['b_over_a']['bound'] is None and goals['b_over_a']['reachable'] is None
    rows = {line.split('  ')[0]: line for line in format_report(f, list(goals.values())).split('\n\n')[2].splitlines()}
    assert re.search(r'  0\.400 +>= 0\.8 +MISS +0\.933$', rows['(c) concurrent clients / (b) one client'])
    assert re.search(r'  0\.800 +<= 0\.4 +MISS \(out of reach\) +0\.500$', rows['(d) p50 service / sentence-transformers'])
    assert re.search(r'  0\.950 +<= 1 +PASS +0\.750$', rows['(j) -bf16 p50 / ONNX Runtime int8 p50'])
    assert re.search(r'  1\.500 +>= 1\.3 +PASS +-$', rows['(b) one client / (a) sentence-transformers'])
    details = format_report(f, list(goals.values())).split('\n\n')[4]
    assert re.search(r'\(l\) the model alone, no service: one sentence p50 / p99 \(tokenizing included\), ours; -bf16 '
                     r'+5\.0 / 7\.0 ms; 1\.5 / 2\.5 ms\n', details)
    assert re.search(r'\(l\) the model alone: calls of 32 inputs / one call of every line, sentences/s: ours; -bf16 '
                     r'+140 / 160; 224 / 340\n', details)
    skipped = derive_ratios({k: v for k, v in measured().items() if 'alone' not in k})
    assert not {k for k in skipped if k.startswith('bound_')}
    assert all(g['bound'] is None and g['reachable'] is None for g in evaluate_goals(skipped))
    assert 'out of reach' not in format_report(skipped, evaluate_goals(skipped))


def test_a_reduced_precision_first_server_is_bounded_against_int8():
    f = derive_ratios(measured(precision='-bf16'))
    assert f['bound_d_p50_over_int8'] == pytest.approx(5.0 / 2.0)
    goal = next(g for g in evaluate_goals(f) if g['goal'] == 'd_p50_int8')
    assert (goal['pass'], goal['reachable'], goal['bound']) == (False, False, pytest.approx(2.5))


def test_one_sentence_calls_wait_the_pause_before_each_timed_call(monkeypatch):
    from benchmarks import timing

    events = []
    monkeypatch.setattr(timing.time, 'sleep', lambda s: events.append(('sleep', s)))
    seconds = timing.one_sentence_seconds(lambda batch: events.append(('call', batch)), ['a', 'b'], 3, 1, pause=0.01)
    assert len(seconds) == 3
    assert events == [('call', ['a']), ('sleep', 0.01), ('call', ['a']), ('sleep', 0.01), ('call', ['b']),
                      ('sleep', 0.01), ('call', ['a'])]


@pytest.mark.e2e
def test_the_floor_is_measured_on_a_real_fake_engine_server():
    """(k) runs a real server with -engine fake on the given flags: a p50 back to back and paced, and
    the many-clients rate, all from real round trips (their values are not asserted)."""
    from types import SimpleNamespace

    from benchmarks.compare import measure_floor

    lines = ['First do it', 'then do it right', 'then do it better', 'a fourth one'] * 4
    figures = measure_floor(SERVER_FLAGS + ['-cpu'], lines, SimpleNamespace(latency_requests=5, clients=3))
    assert set(figures) == {'floor_latency', 'floor_latency_paced', 'floor_c_sentences_per_s'}
    for key in ('floor_latency', 'floor_latency_paced'):
        assert 0 < figures[key]['p50_ms'] <= figures[key]['p99_ms'], figures
    assert figures['floor_c_sentences_per_s'] > 0


@pytest.mark.e2e
def test_the_model_alone_runs_the_batch_sizes_command_in_a_process_of_its_own():
    """(l) on -engine fake: the command's one-sentence calls and its calls of --clients inputs come
    back as figures under the prefix (their values are not asserted); a failing command raises with
    its output."""
    from types import SimpleNamespace

    from benchmarks.compare import measure_alone

    lines = ['First do it', 'then do it right', 'then do it better', 'a fourth one'] * 4
    figures = measure_alone(SERVER_FLAGS + ['-engine', 'fake'], lines, SimpleNamespace(latency_requests=5, clients=3),
                            'bf16_')
    assert set(figures) == {'bf16_alone_latency', 'bf16_alone_c_sentences_per_s', 'bf16_alone_one_call_sentences_per_s'}
    assert 0 < figures['bf16_alone_latency']['p50_ms'] <= figures['bf16_alone_latency']['p99_ms']
    assert figures['bf16_alone_c_sentences_per_s'] > 0 and figures['bf16_alone_one_call_sentences_per_s'] > 0
    with pytest.raises(RuntimeError, match=r'(?s)\(l\) fp32: .*exited with 2:\n.*--latency_requests takes 0 or more'):
        measure_alone(SERVER_FLAGS + ['-engine', 'fake'], lines, SimpleNamespace(latency_requests=-1, clients=3))
