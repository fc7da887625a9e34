"""bert-serving-benchmark on the tiny model: tables printed, results written, bad flags refused.

No timing is asserted: only which rows and keys come out.
"""
from __future__ import annotations

import csv
import json

import pytest

from bert_serving.server.benchmark import Row, format_table, load_sentences, run_benchmark

SENTENCES = ['hello world', 'the quick brown fox jumps over the lazy dog', 'a', 'how old are you?',
             'Café naïve résumé', 'one more line of text']


@pytest.fixture
def vocab_file(tmp_path):
    path = tmp_path / 'sentences.txt'
    path.write_text('\n'.join(SENTENCES) + '\n\n', encoding='utf-8')
    return path


def _argv(model_dir, vocab_file, free_port, *extra):
    # The session's ports (tests/conftest.py), not the kernel's ephemeral ones the command picks by
    # default: another test's connection may take one of those before the server binds it.
    return ['-model_dir', str(model_dir), '-client_vocab_file', str(vocab_file), '-num_repeat', '3',
            '-wait_till_ready', '120', '-num_worker', '1', '-port', str(free_port()),
            '-port_out', str(free_port()), *extra]


def _table_rows(text: str, experiment: str) -> list[list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f'| {experiment}'))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith('|'):
            break
        rows.append([cell.strip() for cell in line.strip('|').split('|')])
    return rows


@pytest.mark.slow
@pytest.mark.e2e
def test_client_batch_size_experiment_prints_a_table_and_writes_json(tiny_hf_dir, vocab_file, tmp_path, capsys,
                                                                       free_port):
    out = tmp_path / 'results.json'
    code = run_benchmark(_argv(tiny_hf_dir, vocab_file, free_port, '-experiments', 'client_batch_size',
                               '-test_client_batch_size', '1', '4', '-output', str(out)))
    assert code == 0

    rows = _table_rows(capsys.readouterr().out, 'client_batch_size')
    assert [r[0] for r in rows] == ['1', '4']
    assert all(float(r[1]) > 0 and float(r[2]) > 0 for r in rows)

    doc = json.loads(out.read_text(encoding='utf-8'))
    assert {'tool', 'date', 'sentences', 'baseline', 'results'} <= set(doc)
    assert doc['baseline']['model_dir'] == str(tiny_hf_dir)
    assert 'test_client_batch_size' not in doc['baseline']
    assert [(r['experiment'], r['value'], r['status']) for r in doc['results']] == [
        ('client_batch_size', '1', 'ok'), ('client_batch_size', '4', 'ok')]
    for r in doc['results']:
        assert r['samples_per_second'] > 0 and r['latency_ms'] > 0
        assert r['min_samples_per_second'] <= r['samples_per_second'] <= r['max_samples_per_second']


@pytest.mark.slow
@pytest.mark.e2e
def test_layers_beyond_the_model_are_skipped_and_csv_is_written(tiny_hf_dir, vocab_file, tmp_path, capsys, free_port):
    out = tmp_path / 'results.csv'
    # The tiny model has 2 layers: -3 and 2 do not exist.
    code = run_benchmark(_argv(tiny_hf_dir, vocab_file, free_port, '-experiments', 'pooling_layer',
                               '-test_pooling_layer', '-1', '-3', '2', '-client_batch_size', '3',
                               '-output', str(out)))
    assert code == 0

    rows = _table_rows(capsys.readouterr().out, 'pooling_layer')
    assert [(r[0], r[1]) for r in rows][1:] == [('-3', 'skipped'), ('2', 'skipped')]
    assert rows[0][0] == '-1' and float(rows[0][1]) > 0
    assert '2 layers' in rows[1][2]

    with open(out, newline='', encoding='utf-8') as f:
        written = list(csv.DictReader(f))
    assert [(r['experiment'], r['value'], r['status']) for r in written] == [
        ('pooling_layer', '-1', 'ok'), ('pooling_layer', '-3', 'skipped'), ('pooling_layer', '2', 'skipped')]
    assert set(written[0]) >= {'samples_per_second', 'latency_ms', 'total_samples_per_second', 'note'}


def test_format_table_shows_errors_and_skips():
    table = format_table('max_seq_len', [
        Row('max_seq_len', '32', 100.0, 90.0, 110.0, 100.0, 40.0),
        Row('max_seq_len', '64', status='error', note='the server stopped'),
    ])
    lines = table.splitlines()
    assert lines[0].split('|')[1].strip() == 'max_seq_len'
    assert '100' in lines[2] and '40.0' in lines[2]
    assert 'error' in lines[3] and 'the server stopped' in lines[3]


def test_load_sentences_drops_empty_lines(vocab_file):
    assert load_sentences(str(vocab_file)) == SENTENCES
    assert load_sentences(str(vocab_file), limit=2) == SENTENCES[:2]


def test_default_sentences_ship_with_the_package(shared_dir):
    """No -client_vocab_file: the first 4,096 lines of the standard bench corpus, from the package."""
    from bert_serving.server.benchmark import default_corpus

    assert 'site-packages' in str(default_corpus()) or 'bert_serving_server' in str(default_corpus())
    corpus = [line.strip() for line in (shared_dir / 'bench' / 'corpus.txt').read_text(encoding='utf-8').splitlines()]
    assert load_sentences(None) == [line for line in corpus if line][:4096]


@pytest.mark.parametrize('flags', [['-num_repeat', '2'], ['-output', 'results.txt'],
                                   ['-experiments', 'no_such_experiment'], ['-test_num_client', '0']])
def test_bad_flags_are_refused_before_any_server_starts(flags, vocab_file):
    with pytest.raises(SystemExit) as e:
        run_benchmark(['-client_vocab_file', str(vocab_file), *flags])
    assert e.value.code == 2


def test_missing_sentence_file_is_reported(tmp_path):
    assert run_benchmark(['-client_vocab_file', str(tmp_path / 'missing.txt')]) == 2
