"""``python -m benchmarks.batch_sizes`` on ``-engine fake``: every size gets its calls of consecutive
corpus lines, the one call of every line comes last, and the table's shares are against it. No
timing is asserted."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # benchmarks/ is a top-level folder, not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks import batch_sizes  # noqa: E402


class _CountingEngine:
    """Records the inputs of every run; a feature is its line."""

    def __init__(self):
        self.runs = []

    def featurize(self, texts, is_tokenized=False):
        return [type('F', (), {'input_ids': t.split(), 'text': t})() for t in texts]

    def run(self, features):
        self.runs.append([f.text for f in features])


def test_each_size_runs_consecutive_lines_after_its_warm_up_calls_and_the_one_call_comes_last():
    engine = _CountingEngine()
    lines = [f'line {i}' for i in range(10)]
    rows = batch_sizes.measure(engine, lines, [1, 4], min_sentences=6)
    assert [(r['size'], r['calls'], r['inputs'], r['one_call']) for r in rows] == [
        (1, 6, 6, False), (4, 2, 8, False), (10, 1, 10, True)]
    assert all(r['tokens'] == 2 * r['inputs'] for r in rows)
    warm = batch_sizes.WARM_UP_CALLS
    ones = engine.runs[:warm + 6]
    assert ones[warm:] == [[f'line {i}'] for i in range(6)]
    fours = engine.runs[warm + 6:warm + 6 + 2 + 2]
    assert fours[2:] == [lines[0:4], lines[4:8]]
    assert engine.runs[-1] == lines and engine.runs[-2] == lines  # its warm-up, then the timed one


def test_every_call_of_a_size_is_full_and_wraps_around_the_lines():
    engine = _CountingEngine()
    lines = [f'line {i}' for i in range(10)]
    rows = batch_sizes.measure(engine, lines, [4, 10], min_sentences=10)
    assert [(r['size'], r['calls'], r['inputs'], r['one_call']) for r in rows] == [
        (4, 3, 12, False), (10, 1, 10, False), (10, 1, 10, True)]
    timed_fours = engine.runs[3:6]  # after the three warm-up calls (all three calls of 4)
    assert timed_fours == [lines[0:4], lines[4:8], lines[8:10] + lines[0:2]]


def test_the_table_gives_rates_cpu_and_the_share_of_the_one_call():
    rows = [{'size': 2, 'one_call': False, 'calls': 5, 'inputs': 10, 'tokens': 200, 'seconds': 0.5, 'cpu_seconds': 0.8},
            {'size': 10, 'one_call': True, 'calls': 1, 'inputs': 10, 'tokens': 200, 'seconds': 0.25,
             'cpu_seconds': 0.4}]
    table = batch_sizes.format_table(rows).splitlines()
    assert table[0].split() == ['inputs', 'a', 'call', 'word', 'pieces', 'a', 'call', 'ms', 'a', 'call', 'sentences/s',
                                'CPU', 'ms', 'a', 'sentence', '/', 'one', 'call']
    assert table[2].split() == ['2', '40', '100.00', '20', '80.00', '0.50']
    assert table[3].split() == ['10', '(all', 'in', 'one', 'call)', '200', '250.00', '40', '40.00', '1.00']


@pytest.mark.e2e
def test_the_command_runs_a_fake_engine_and_writes_its_figures(tmp_path, capsys):
    out = tmp_path / 'sizes.json'
    assert batch_sizes.main(['--sizes', '1,3', '--lines', '12', '--min_sentences', '4', '--output', str(out),
                             '-engine', 'fake']) == 0
    table = capsys.readouterr().out
    assert 'calls of N one-sentence inputs' in table and '12 (all in one call)' in table
    doc = json.loads(out.read_text())
    assert [(r['size'], r['inputs']) for r in doc['rows']] == [(1, 4), (3, 6), (12, 12)]
    assert '-engine' in doc['flags'] and doc['max_seq_len'] == 128


@pytest.mark.e2e
def test_the_command_times_one_sentence_calls_when_asked(tmp_path, capsys):
    out = tmp_path / 'sizes.json'
    assert batch_sizes.main(['--sizes', '2', '--lines', '12', '--min_sentences', '4', '--latency_requests', '7',
                             '--output', str(out), '-engine', 'fake']) == 0
    assert re.search(r'one sentence a call, tokenizing included, 7 calls: p50 [0-9.]+ ms, p99 [0-9.]+ ms\n',
                     capsys.readouterr().out)
    latency = json.loads(out.read_text())['latency']
    assert 0 < latency['p50_ms'] <= latency['p99_ms']
    assert batch_sizes.main(['--sizes', '2', '--lines', '12', '--min_sentences', '4', '--output', str(out),
                             '-engine', 'fake']) == 0
    assert 'one sentence a call' not in capsys.readouterr().out and json.loads(out.read_text())['latency'] is None


@pytest.mark.parametrize('requests', [6, 14])
def test_one_sentence_calls_encode_each_line_alone_after_an_untimed_pass_over_them(requests):
    """Every timed sentence ran once untimed before (new shapes build kernels), and at least
    LATENCY_WARM_UP sentences did."""
    calls = []
    engine = type('E', (), {'encode': lambda self, texts: calls.append(list(texts))})()
    lines = [f'line {i}' for i in range(batch_sizes.LATENCY_WARM_UP + 2)]
    latency = batch_sizes.measure_latency(engine, lines, requests)
    assert set(latency) == {'p50_ms', 'p99_ms'}
    warm = max(batch_sizes.LATENCY_WARM_UP, min(requests, len(lines)))
    assert calls[:warm] == [[line] for line in lines[:warm]]
    timed = [[lines[i % len(lines)]] for i in range(requests)]
    assert calls[warm:] == timed and all(call in calls[:warm] for call in timed)


def test_sizes_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        batch_sizes.main(['--sizes', '0,4', '-engine', 'fake'])
    assert '--sizes takes positive integers up to --lines' in capsys.readouterr().err
    for sizes in ('a', '', '5000'):
        with pytest.raises(SystemExit):
            batch_sizes.main(['--sizes', sizes, '-engine', 'fake'])
        assert '--sizes takes positive integers' in capsys.readouterr().err
