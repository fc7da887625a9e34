"""FakeEngine: the numpy stand-in the pipeline tests use instead of TensorFlow."""
import numpy as np
import pytest

from bert_serving.client.errors import BadRequest
from bert_serving.client.validation import validate_texts
from bert_serving.server.config import EngineConfig
from bert_serving.server.engine.factory import create_engine
from bert_serving.server.engine.fake import FAKE_WIDTH, FakeEngine


def fake(**fields) -> FakeEngine:
    return FakeEngine(EngineConfig(engine='fake', **fields))


def test_create_engine_picks_the_fake():
    engine = create_engine(EngineConfig(engine='fake'))
    assert isinstance(engine, FakeEngine)
    assert engine.output_dim == FAKE_WIDTH and not engine.is_token_level


def test_vectors_are_deterministic_across_engines_and_batches():
    texts = ['hello world', 'the same words again', 'hello']
    a = fake().encode(texts)[0]
    b = fake().encode(list(reversed(texts)))[0]
    one_by_one = np.concatenate([fake().encode([t])[0] for t in texts])
    assert a.shape == (3, FAKE_WIDTH) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b[::-1])
    np.testing.assert_array_equal(a, one_by_one)
    assert not np.array_equal(a[0], a[2])


def test_a_run_reports_its_padded_tokens_as_one_call_padded_to_the_longest():
    engine = fake()
    features = engine.featurize(['one two three', 'four'])  # 5 and 3 word pieces with [CLS] and [SEP]
    engine.run(features)
    assert engine.last_padded_tokens == 2 * 5


def test_reduce_mean_is_the_mean_of_the_token_matrix():
    texts = ['one two three', 'four']
    pooled = fake(max_seq_len=None).encode(texts)[0]
    none = fake(max_seq_len=None, pooling_strategy='NONE')
    matrix = none.encode(texts)[0]
    assert none.is_token_level and matrix.shape == (2, 5, FAKE_WIDTH)  # [CLS] one two three [SEP]
    np.testing.assert_allclose(pooled[0], matrix[0].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(pooled[1], matrix[1, :3].mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(matrix[1, 3:], 0)  # padding rows are zero


def test_none_pooling_pads_to_max_seq_len():
    engine = fake(max_seq_len=6, pooling_strategy='NONE')
    out, tokens = engine.encode(['a', 'a b c'])
    assert out.shape == (2, 6, FAKE_WIDTH)
    assert tokens == [['[CLS]', 'a', '[SEP]'], ['[CLS]', 'a', 'b', 'c', '[SEP]']]
    assert not engine.trims_token_axis()
    assert fake(max_seq_len=None, pooling_strategy='NONE').trims_token_axis()


def test_an_explicit_token_axis_is_honoured():
    engine = fake(max_seq_len=None, pooling_strategy='NONE')
    features = engine.featurize(['a b', 'c'])
    assert engine.run(features, token_axis=7).shape == (2, 7, FAKE_WIDTH)


def test_max_seq_len_truncates_on_the_right_and_keeps_sep():
    engine = fake(max_seq_len=4)
    [feature] = engine.featurize(['w1 w2 w3 w4 w5'])
    assert feature.tokens == ('[CLS]', 'w1', 'w2', '[SEP]')
    assert len(feature.input_ids) == len(feature.type_ids) == 4
    np.testing.assert_array_equal(engine.encode(['w1 w2 w3 w4 w5'])[0], engine.encode(['w1 w2'])[0])


def test_lower_case_follows_the_config():
    assert fake().featurize(['Hello'])[0].tokens == ('[CLS]', 'hello', '[SEP]')
    assert fake(do_lower_case=False).featurize(['Hello'])[0].tokens == ('[CLS]', 'Hello', '[SEP]')


def test_pairs_split_at_the_marker():
    engine = fake(max_seq_len=None)
    [plain] = engine.featurize(['a b ||| c'])
    assert plain.tokens == ('[CLS]', 'a', 'b', '[SEP]', 'c', '[SEP]')
    assert plain.type_ids == (0, 0, 0, 1, 1, 1)
    [tokenized] = engine.featurize([['a', 'b', '|||', 'c']], is_tokenized=True)
    assert tokenized == plain
    assert not np.array_equal(engine.encode(['a b ||| c'])[0], engine.encode(['a b c'])[0])


def test_pre_tokenized_input_is_taken_as_is():
    [feature] = fake().featurize([['Mixed', 'Case']], is_tokenized=True)
    assert feature.tokens == ('[CLS]', 'Mixed', 'Case', '[SEP]')


@pytest.mark.parametrize('texts, is_tokenized, match', [
    ([3], False, r'texts\[0\] is int \(3\), expected str$'),
    ([b'bytes'], False, r"texts\[0\] is bytes \(b'bytes'\), expected str$"),
    (['not a list'], True, r"texts\[0\] is str \('not a list'\), expected a list of str \(is_tokenized=True\)$"),
    ([['a', 1]], True, r'texts\[0\]\[1\] is int \(1\), expected str$'),
    (['\ud800 x'], False, r"texts\[0\] holds a lone surrogate '\\ud800' at character 0"),
    ('one sentence', False, r"texts is str \('one sentence'\), expected a list of str; wrap a single sentence"),
])
def test_wrong_input_is_refused_in_the_client_s_words(texts, is_tokenized, match):
    with pytest.raises(BadRequest, match=match) as refused:
        fake().featurize(texts, is_tokenized)
    with pytest.raises(BadRequest) as by_client:
        validate_texts(texts, is_tokenized)
    assert str(refused.value) == str(by_client.value)
    assert isinstance(refused.value, TypeError)  # what the fake raised before, still caught


def test_an_empty_request_has_no_features():
    assert fake().featurize([]) == [] and fake().featurize([], is_tokenized=True) == []


def test_fail_word_raises():
    engine = fake()
    features = engine.featurize(['fine', 'this will __fail__'])
    with pytest.raises(RuntimeError, match='on purpose'):
        engine.run(features)
    assert engine.encode(['fine'])[0].shape == (1, FAKE_WIDTH)  # the engine still works afterwards
