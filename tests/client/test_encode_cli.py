"""bert-serving-encode without a real server: reading text, JSONL and CSV input (and naming the line
of every bad record), the output and its progress file, resuming after an interruption, and the
progress line. The encoding runs against the in-thread FakeServer of conftest.py.
(Whole-server runs, and interrupting the command with signals, are in tests/service/test_encode_command.py.)"""
from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import types

import numpy as np
import pytest

from bert_serving.client import BadRequest, ConfigError
from bert_serving.client import checkpoint, encode_cli
from bert_serving.client.corpus import InputSpec, read_records
from bert_serving.client.encode_cli import EncodeInterrupted, encode_file, main


def records(tmp_path, content: bytes, **options):
    path = tmp_path / 'input'
    path.write_bytes(content)
    return [tuple(r) for r in read_records(InputSpec(str(path), **options))]


def test_text_lines_skip_blank_ones_and_keep_their_line_numbers(tmp_path):
    content = '\ufefffirst line\r\n\n   \nsecond  line \ncafé naïve'.encode()
    assert records(tmp_path, content) == [(1, '1', 'first line'), (4, '4', 'second  line '), (5, '5', 'café naïve')]


def test_jsonl_field_and_id_field(tmp_path):
    lines = [{'text': 'a b', 'id': 7}, {}, {'text': ' ', 'id': 'blank'}, {'text': 'c', 'id': 'doc-9', 'x': 1}]
    content = '\n'.join('' if not obj else json.dumps(obj) for obj in lines).encode() + b'\n'
    assert records(tmp_path, content, jsonl_field='text', id_field='id') == [(1, '7', 'a b'), (4, 'doc-9', 'c')]
    assert records(tmp_path, content, jsonl_field='text') == [(1, '1', 'a b'), (4, '4', 'c')]


def test_csv_column_counts_lines_of_quoted_line_breaks(tmp_path):
    content = b'id,body\n1,"two\nlines"\n2,\n3,plain\n'
    assert records(tmp_path, content, csv_column='body', id_field='id') == [(2, '1', 'two\nlines'), (5, '3', 'plain')]
    assert records(tmp_path, b'body\tid\nx y\tA\n', csv_column='body', id_field='id', delimiter='\t') == [
        (2, 'A', 'x y')]


BAD_INPUTS = [
    (b'fine\nalso fine\nbad \xff byte\n', [], r'line 3: not UTF-8 \(byte 0xff at column 5\)'),
    (b'{"text": "a"}\n{"text": \n', ['--jsonl-field', 'text'], r'line 2: invalid JSON \('),
    (b'{"text": "a"}\n\n{"body": "b"}\n', ['--jsonl-field', 'text'], r"line 3: no field 'text' \(fields: 'body'\)"),
    (b'{"text": 5}\n', ['--jsonl-field', 'text'], r"line 1: field 'text' is int \(5\), expected a string"),
    (b'["text"]\n', ['--jsonl-field', 'text'], r'line 1: a JSON list, expected an object'),
    (b'{"text": "\\ud800"}\n', ['--jsonl-field', 'text'], r"line 1: field 'text' holds a lone UTF-16 surrogate"),
    (b'{"text": "a", "id": "x\\ny"}\n', ['--jsonl-field', 'text', '--id-field', 'id'],
     r"line 1: field 'id' is 'x\\ny': an id must be non-empty and on one line"),
    (b'{"text": "a"}\n', ['--jsonl-field', 'text', '--id-field', 'id'], r"line 1: no field 'id'"),
    (b'id,text\n1,a\n', ['--csv-column', 'body'], r"line 1: no column 'body' in the header \(columns: 'id', 'text'\)"),
    (b'id,text\n1,a\n2\n', ['--csv-column', 'text'], r'line 3: 1 fields, the header has 2'),
    (b'id,text\n1,"a\n', ['--csv-column', 'text'], r'line 2: malformed CSV'),
    (b'', ['--csv-column', 'text'], r'the file is empty'),
    (b'', [], r'no sentences to encode \(the file is empty, or holds only blank records\)'),
    (b'\n  \n', [], r'no sentences to encode'),
    (b'a\n', ['--id-field', 'id'], r'an id field or column needs --jsonl-field or --csv-column'),
]


@pytest.mark.parametrize('content, options, message', BAD_INPUTS)
def test_bad_input_is_one_line_naming_the_line_and_exit_2(tmp_path, capsys, content, options, message):
    path = tmp_path / 'input'
    path.write_bytes(content)
    # No server listens on port 1: the input is checked in full before the command connects.
    code = main([str(path), str(tmp_path / 'out.npy'), '-port', '1', '-port_out', '2', *options])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count('\n') == 1 and err.startswith('bert-serving-encode: '), err
    assert re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['input']  # nothing written, nothing left behind


def test_output_equals_encode_and_ids_are_line_numbers(fake, tmp_path):
    texts = [f'sentence {i} ' + 'word ' * (i % 7) for i in range(1000)]
    corpus = tmp_path / 'corpus.txt'
    corpus.write_text('\n'.join(texts[:500]) + '\n\n' + '\n'.join(texts[500:]) + '\n')
    summary = encode_file(InputSpec(str(corpus)), str(tmp_path / 'vectors.npy'), fake_kwargs(fake),
                          batch_size=64, in_flight=3)
    assert summary[2:6] == (1000, fake.width, 0, 1000)
    vectors = np.load(tmp_path / 'vectors.npy')
    assert vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors, fake.encode(texts))
    ids = (tmp_path / 'vectors.ids.txt').read_text().split('\n')
    assert ids == [str(i) for i in range(1, 501)] + [str(i) for i in range(502, 1002)] + ['']
    assert json.loads((tmp_path / 'vectors.progress.json').read_text())['done'] == 1000
    assert max(r.msg_len for r in fake.data_requests()) <= 64 and fake.max_outstanding <= 3
    # A finished output: another run sends nothing.
    sent = len(fake.data_requests())
    assert encode_file(InputSpec(str(corpus)), str(tmp_path / 'vectors.npy'), fake_kwargs(fake)).encoded == 0
    assert len(fake.data_requests()) == sent


def fake_kwargs(fake) -> dict:
    return {'ip': '127.0.0.1', 'port': fake.port, 'port_out': fake.port_out, 'timeout': 10000}


@pytest.fixture
def corpus(tmp_path):
    texts = [f'line {i} of the corpus' for i in range(600)]
    path = tmp_path / 'corpus.txt'
    path.write_text('\n'.join(texts) + '\n')
    return InputSpec(str(path)), texts


def test_by_default_requests_span_several_server_batches_so_the_server_sorts_them_together(fake, tmp_path):
    # The server sorts each request by length before cutting it into batches of -max_batch_size (256
    # by default): requests of several batches pad less and make fewer model calls than one-batch ones.
    assert encode_cli.BATCH_SIZE % 256 == 0 and encode_cli.BATCH_SIZE >= 4 * 256
    texts = [f'sentence {i} ' + 'word ' * (i % 11) for i in range(2 * encode_cli.BATCH_SIZE + 100)]
    corpus = tmp_path / 'corpus.txt'
    corpus.write_text('\n'.join(texts) + '\n')
    summary = encode_file(InputSpec(str(corpus)), str(tmp_path / 'vectors.npy'), fake_kwargs(fake))
    assert summary.encoded == len(texts)
    np.testing.assert_array_equal(np.load(tmp_path / 'vectors.npy'), fake.encode(texts))
    assert [r.msg_len for r in fake.data_requests()] == [encode_cli.BATCH_SIZE] * 2 + [100]
    assert fake.max_outstanding <= encode_cli.IN_FLIGHT


def test_an_interrupted_run_saves_what_is_done_and_the_next_goes_on(fake, tmp_path, corpus, monkeypatch):
    spec, texts = corpus
    output = str(tmp_path / 'vectors.npy')
    real_write, calls = checkpoint.Output.write, []

    def write_then_interrupt(self, start, vectors):
        calls.append(start)
        if len(calls) == 4:
            raise KeyboardInterrupt
        real_write(self, start, vectors)

    monkeypatch.setattr(checkpoint.Output, 'write', write_then_interrupt)
    monkeypatch.setattr(encode_cli, 'COMMIT_SECONDS', 0.0)  # commit after every reply
    with pytest.raises(EncodeInterrupted) as info:
        encode_file(spec, output, fake_kwargs(fake), batch_size=50, in_flight=2)
    monkeypatch.undo()
    done = info.value.done
    assert 0 < done <= 150 and info.value.rows == 600
    assert json.loads((tmp_path / 'vectors.progress.json').read_text())['done'] == done
    np.testing.assert_array_equal(np.load(output)[:done], fake.encode(texts[:done]))

    # The first run's requests still in flight may reach the fake after this line: count the
    # second run's by its client identity, not by a total taken now.
    first_run = {r.identity for r in fake.data_requests()}
    summary = encode_file(spec, output, fake_kwargs(fake), batch_size=50)
    assert (summary.start, summary.encoded) == (done, 600 - done)
    assert sum(r.msg_len for r in fake.data_requests() if r.identity not in first_run) == 600 - done
    np.testing.assert_array_equal(np.load(output), fake.encode(texts))


def test_a_crash_leaves_rows_past_the_progress_file_to_be_encoded_again(fake, tmp_path, corpus):
    spec, texts = corpus
    output = tmp_path / 'vectors.npy'
    encode_file(spec, str(output), fake_kwargs(fake))
    # What a crash leaves: the progress file counts 123 rows, the rows after hold garbage.
    vectors = np.load(output, mmap_mode='r+')
    vectors[123:] = np.nan
    vectors.flush()
    del vectors
    progress = tmp_path / 'vectors.progress.json'
    progress.write_text(progress.read_text().replace('"done": 600', '"done": 123'))
    assert encode_file(spec, str(output), fake_kwargs(fake)).encoded == 600 - 123
    np.testing.assert_array_equal(np.load(output), fake.encode(texts))


def test_an_output_of_another_input_is_never_resumed(fake, tmp_path, corpus):
    spec, texts = corpus
    output = str(tmp_path / 'vectors.npy')
    encode_file(spec, output, fake_kwargs(fake))
    with open(spec.path, 'a') as f:
        f.write('one more line\n')
    with pytest.raises(ConfigError, match='vectors.progress.json was written for another input'):
        encode_file(spec, output, fake_kwargs(fake))
    with pytest.raises(ConfigError, match='vectors.progress.json was written for another input'):
        encode_file(InputSpec(spec.path, csv_column=texts[0]), output, fake_kwargs(fake))  # same bytes as CSV
    assert encode_file(spec, output, fake_kwargs(fake), overwrite=True).encoded == 601
    np.testing.assert_array_equal(np.load(output), fake.encode(texts + ['one more line']))


def test_an_output_without_progress_file_is_not_overwritten(fake, tmp_path, corpus):
    spec, _ = corpus
    output = tmp_path / 'vectors.npy'
    output.write_bytes(b'precious')
    with pytest.raises(ConfigError, match='vectors.npy exists, but .*vectors.progress.json does not'):
        encode_file(spec, str(output), fake_kwargs(fake))
    assert output.read_bytes() == b'precious' and not fake.data_requests()


def test_a_damaged_output_is_refused(fake, tmp_path, corpus):
    spec, _ = corpus
    output = tmp_path / 'vectors.npy'
    encode_file(spec, str(output), fake_kwargs(fake))
    np.save(output, np.zeros((600, 3), np.float32))
    with pytest.raises(ConfigError, match=r'holds float32 \[600, 3\], but .* expects float32 \[600, 8\]'):
        encode_file(spec, str(output), fake_kwargs(fake))


def test_stdin_is_spooled_and_resumable(fake, tmp_path, capsys, monkeypatch):
    texts = ['from stdin', 'second', 'third']
    data = ('\n'.join(texts) + '\n').encode()
    argv = ['-', str(tmp_path / 'v.npy'), '-ip', '127.0.0.1', '-port', str(fake.port), '-port_out', str(fake.port_out)]
    for run in range(2):
        monkeypatch.setattr(sys, 'stdin', types.SimpleNamespace(buffer=io.BytesIO(data)))
        assert main(argv) == 0
        assert f'encoded {3 if run == 0 else 0} rows this run' in capsys.readouterr().err
    np.testing.assert_array_equal(np.load(tmp_path / 'v.npy'), fake.encode(texts))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['v.ids.txt', 'v.npy', 'v.progress.json']


def test_batch_options_are_checked(tmp_path, corpus):
    spec, _ = corpus
    with pytest.raises(ConfigError, match='must be >= 1'):
        encode_file(spec, str(tmp_path / 'v.npy'), batch_size=0)


@pytest.mark.parametrize('enabled', [True, False])
def test_plain_progress_line_without_tqdm(capsys, monkeypatch, enabled):
    monkeypatch.setitem(sys.modules, 'tqdm', None)  # import tqdm raises ImportError
    status = encode_cli._Status(total=1000, initial=200, enabled=enabled)
    status.update(300)
    status.close()
    err = capsys.readouterr().err
    if enabled:
        assert err.endswith('\n') and '500/1,000 sentences (50%), ' in err and ' sentences/s, ETA ' in err
    else:
        assert err == ''


def test_the_command_imports_neither_tqdm_nor_tensorflow():
    code = ('import sys; sys.modules["tqdm"] = None; import bert_serving.client.encode_cli; '
            'print(sorted(m for m in ("tqdm", "tensorflow", "bert_serving.server") if sys.modules.get(m)))')
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '[]'


def test_input_options_are_checked():
    with pytest.raises(BadRequest, match='not both'):
        InputSpec('x', jsonl_field='a', csv_column='b')
    with pytest.raises(BadRequest, match='one character'):
        InputSpec('x', csv_column='b', delimiter=';;')
