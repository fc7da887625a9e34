"""Tests for bert_serving.server.engine.features."""

import dataclasses
import random

import numpy as np
import pytest

from bert_serving.client.errors import BadRequest
from bert_serving.client.validation import validate_texts
from bert_serving.server.engine import features as features_module
from bert_serving.server.errors import EncodeError
from bert_serving.server.engine.features import Feature, pad_batch, to_features
from bert_serving.server.engine.tokenization import BertTokenizer

# `reference`, `shared_dir` and `bundled_model_dir` come from tests/conftest.py.


@pytest.fixture(scope="module")
def tok(bundled_model_dir):
    return BertTokenizer(str(bundled_model_dir / "vocab.txt"))


def _tokens(features):
    return [list(f.tokens) for f in features]


def _pop_loop(len_a, len_b, budget):
    """The textbook truncation loop, as an oracle."""
    while len_a + len_b > budget:
        if len_a > len_b:
            len_a -= 1
        else:
            len_b -= 1
    return len_a, len_b


# --- reference token lists --------------------------------------------------


@pytest.mark.parametrize(
    "key, inputs, max_seq_len, is_tokenized",
    [
        ("tokens_default", "texts", 25, False),
        ("tokens_128", "texts", 128, False),
        ("tokens_tokenized_default", "tokenized", 25, True),
    ],
)
def test_reference_tokens(tok, reference, key, inputs, max_seq_len, is_tokenized):
    features = to_features(tok, getattr(reference, inputs), is_tokenized=is_tokenized, max_seq_len=max_seq_len)
    expected = getattr(reference, key)
    assert len(features) == len(expected)
    for row, (feature, want) in enumerate(zip(features, expected)):
        assert list(feature.tokens) == want, f"row {row}"
        assert list(feature.input_ids) == tok.convert_tokens_to_ids(want), f"row {row}"


def test_reference_type_ids(tok, reference):
    features = to_features(tok, reference.texts, is_tokenized=False, max_seq_len=25)
    for feature in features:
        first_sep = feature.tokens.index("[SEP]")
        assert feature.type_ids == (0,) * (first_sep + 1) + (1,) * (len(feature) - first_sep - 1)


def test_no_limit_uses_longest_input(tok, reference):
    # The reference `none_nolimit` config pins this length at T=143.
    config = reference.configs["none_nolimit"]
    features = to_features(tok, reference.texts, is_tokenized=False, max_seq_len=None)
    assert max(len(f) for f in features) == config["shape"][1] == 143
    untruncated = to_features(tok, reference.texts, is_tokenized=False, max_seq_len=1000)
    assert _tokens(features) == _tokens(untruncated)


def test_no_limit_is_capped_at_max_position_embeddings(tok, reference):
    features = to_features(
        tok, reference.texts, is_tokenized=False, max_seq_len=None, max_position_embeddings=50
    )
    assert max(len(f) for f in features) == 50
    assert _tokens(features) == _tokens(
        to_features(tok, reference.texts, is_tokenized=False, max_seq_len=50)
    )


def test_no_limit_depends_on_the_request_only(tok):
    short = to_features(tok, ["a b", "a b c d"], is_tokenized=False, max_seq_len=None)
    assert [len(f) for f in short] == [4, 6]
    assert to_features(tok, [], is_tokenized=False, max_seq_len=None) == []


# --- layout -----------------------------------------------------------------


def test_single_and_pair_layout(tok):
    single, pair = to_features(tok, ["hello world", "hello ||| big world"], is_tokenized=False, max_seq_len=32)
    assert single.tokens == ("[CLS]", "hello", "world", "[SEP]")
    assert single.type_ids == (0, 0, 0, 0)
    assert single.input_ids == (101, tok.vocab["hello"], tok.vocab["world"], 102)
    assert pair.tokens == ("[CLS]", "hello", "[SEP]", "big", "world", "[SEP]")
    assert pair.type_ids == (0, 0, 0, 1, 1, 1)


def test_pair_marker_needs_spaces_and_splits_once(tok):
    (joined,) = to_features(tok, ["a|||b"], is_tokenized=False, max_seq_len=32)
    assert joined.tokens == ("[CLS]", "a", "|", "|", "|", "b", "[SEP]")
    (nested,) = to_features(tok, ["a ||| b ||| c"], is_tokenized=False, max_seq_len=32)
    assert nested.tokens == ("[CLS]", "a", "[SEP]", "b", "|", "|", "|", "c", "[SEP]")


@pytest.mark.parametrize("text", ["", " ", "\t\n", "\x00"])
def test_empty_text_gives_cls_sep(tok, text):
    (feature,) = to_features(tok, [text], is_tokenized=False, max_seq_len=25)
    assert feature.tokens == ("[CLS]", "[SEP]")
    assert feature.type_ids == (0, 0)


def test_empty_pair_sides_keep_their_separators(tok):
    (feature,) = to_features(tok, ["a ||| "], is_tokenized=False, max_seq_len=25)
    assert feature.tokens == ("[CLS]", "a", "[SEP]", "[SEP]")
    assert feature.type_ids == (0, 0, 0, 1)


def test_single_is_cut_on_the_right(tok):
    (feature,) = to_features(tok, ["one two three four five"], is_tokenized=False, max_seq_len=5)
    assert feature.tokens == ("[CLS]", "one", "two", "three", "[SEP]")
    (feature,) = to_features(tok, ["one two"], is_tokenized=False, max_seq_len=2)
    assert feature.tokens == ("[CLS]", "[SEP]")


# --- long texts are tokenized on a prefix ------------------------------------------------------

# Characters that test where a prefix may end: words, punctuation, accents (composed and combining),
# a capital sigma whose lower case depends on what follows, CJK, spaces the tokenizer treats as
# whitespace (U+3000, U+00A0) or drops (U+200B, controls), U+FFFD, and words longer than 100 chars.
_PIECES = ["the", "quick", "Brown", "fox", "jumps", ".", ",", "!", "(", "café", "cafe\u0301", "naïve",
           "ΟΔΟΣ", "Σ", "ςσ", "中", "文字", "İstanbul", "ﬁne", "\u200b", "\x00", "\x1c", "\ufffd", "\u0301",
           "x" * 120, "ab" * 30, "unaffable", "résumé", "\u3000", "\u00a0", "|||", "1234"]
_SPACES = [" ", " ", " ", "  ", "\t", "\n", "\r\n", "", "", "\u3000", "\u00a0", "\x1c", "\u2028"]


def _random_text(rng, words: int) -> str:
    return "".join(rng.choice(_PIECES) + rng.choice(_SPACES) for _ in range(words))


def _features_with_cut(tok, monkeypatch, chars_per_piece, texts, max_seq_len):
    monkeypatch.setattr(features_module, "CUT_CHARS_PER_PIECE", chars_per_piece)
    return to_features(tok, texts, is_tokenized=False, max_seq_len=max_seq_len)


@pytest.mark.parametrize("max_seq_len", [3, 5, 8, 25, 64, None])
def test_tokenizing_a_prefix_gives_the_features_of_the_whole_text(tok, monkeypatch, max_seq_len):
    """The cut never changes a feature: 200 random texts of up to 2,000 words (some of them pairs),
    with the default prefix, one of a character per piece (always too short: it grows), and none."""
    rng = random.Random(max_seq_len or 0)
    texts = []
    for i in range(200):
        text = _random_text(rng, rng.choice([1, 5, 40, 300, 2000]))
        if i % 3 == 0:
            text += " ||| " + _random_text(rng, rng.choice([1, 5, 40, 300, 2000]))
        texts.append(text)
    whole = _features_with_cut(tok, monkeypatch, 10**12, texts, max_seq_len)
    for chars_per_piece in (features_module.CUT_CHARS_PER_PIECE, 1):
        assert _features_with_cut(tok, monkeypatch, chars_per_piece, texts, max_seq_len) == whole


def test_a_text_of_mostly_dropped_characters_is_still_whole(tok, monkeypatch):
    # Words the tokenizer drops give a prefix no pieces: it grows until it has enough, or is all.
    text = " ".join(["\x00\u200b"] * 5000 + ["kept", "words", "at", "the", "end"])
    (feature,) = to_features(tok, [text], is_tokenized=False, max_seq_len=25)
    assert feature.tokens == ("[CLS]", "kept", "words", "at", "the", "end", "[SEP]")


def test_a_long_text_is_tokenized_on_a_prefix_only(tok, monkeypatch):
    seen = []
    original = tok.tokenize
    monkeypatch.setattr(tok, "tokenize", lambda text: seen.append(len(text)) or original(text))
    text = "many words here " * 400_000  # 6.4 MB
    (feature,) = to_features(tok, [text], is_tokenized=False, max_seq_len=25)
    assert feature.tokens == ("[CLS]",) + ("many", "words", "here") * 7 + ("many", "words", "[SEP]")
    assert seen and max(seen) <= 25 * features_module.CUT_CHARS_PER_PIECE


def test_pair_truncation_matches_pop_loop(tok):
    for len_a in range(8):
        for len_b in range(8):
            tokens = ["a"] * len_a + ["|||"] + ["b"] * len_b
            for budget in range(len_a + len_b + 2):
                (feature,) = to_features(tok, [tokens], is_tokenized=True, max_seq_len=budget + 3)
                want_a, want_b = _pop_loop(len_a, len_b, budget)
                expected = ("[CLS]",) + ("a",) * want_a + ("[SEP]",) + ("b",) * want_b + ("[SEP]",)
                assert feature.tokens == expected, (len_a, len_b, budget)


def test_pair_tie_drops_second_side_first(tok):
    (feature,) = to_features(tok, ["a a a ||| b b b"], is_tokenized=False, max_seq_len=8)
    assert feature.tokens == ("[CLS]", "a", "a", "a", "[SEP]", "b", "b", "[SEP]")


def test_longer_side_loses_first(tok):
    (feature,) = to_features(tok, ["a a a a a a ||| b b"], is_tokenized=False, max_seq_len=8)
    assert feature.tokens == ("[CLS]", "a", "a", "a", "[SEP]", "b", "b", "[SEP]")
    (feature,) = to_features(tok, ["a ||| b b b b b b b"], is_tokenized=False, max_seq_len=8)
    assert feature.tokens == ("[CLS]", "a", "[SEP]", "b", "b", "b", "b", "[SEP]")


def test_limit_too_short_for_special_tokens(tok):
    with pytest.raises(EncodeError, match="max_seq_len=1 is too short: a sentence needs 2 tokens") as short:
        to_features(tok, ["a"], is_tokenized=False, max_seq_len=1)
    assert isinstance(short.value, ValueError)
    with pytest.raises(EncodeError, match="max_seq_len=2 is too short: a pair needs 3 tokens"):
        to_features(tok, ["a ||| b"], is_tokenized=False, max_seq_len=2)


def test_batched_equals_one_at_a_time(tok, reference):
    texts = reference.texts
    batched = to_features(tok, texts, is_tokenized=False, max_seq_len=25)
    singles = [to_features(tok, [t], is_tokenized=False, max_seq_len=25)[0] for t in texts]
    assert batched == singles


# --- pre-tokenized input ----------------------------------------------------


def test_pretokenized_words_are_looked_up_as_is(tok):
    (feature,) = to_features(tok, [["Hello", "hello", "##ing", "HELLO", "[MASK]"]], is_tokenized=True, max_seq_len=10)
    assert feature.tokens == ("[CLS]", "[UNK]", "hello", "##ing", "[UNK]", "[MASK]", "[SEP]")
    assert feature.input_ids == (101, 100, tok.vocab["hello"], tok.vocab["##ing"], 100, tok.vocab["[MASK]"], 102)


def test_pretokenized_empty_and_pair(tok):
    empty, pair = to_features(tok, [[], ["x", "|||", "y", "|||"]], is_tokenized=True, max_seq_len=10)
    assert empty.tokens == ("[CLS]", "[SEP]")
    # Only the first "|||" splits; a later one is an unknown token of b.
    assert pair.tokens == ("[CLS]", "x", "[SEP]", "y", "[UNK]", "[SEP]")
    assert pair.type_ids == (0, 0, 0, 1, 1, 1)


def test_no_special_token_for_pretokenized(tok):
    single, pair = to_features(
        tok, [["hello", "world"], ["a", "b", "|||", "c"]], is_tokenized=True, max_seq_len=3, no_special_token=True
    )
    assert single.tokens == ("hello", "world")
    assert single.type_ids == (0, 0)
    assert pair.tokens == ("a", "b", "c")
    assert pair.type_ids == (0, 0, 1)
    (cut,) = to_features(tok, [["a", "b", "c", "d"]], is_tokenized=True, max_seq_len=2, no_special_token=True)
    assert cut.tokens == ("a", "b")


def test_an_empty_input_without_special_tokens_is_refused_by_its_index(tok):
    """It would give the model no token to compute: a clear error for the request, not a batch whose
    model call fails for everyone in it."""
    from bert_serving.client.errors import BadRequest

    with pytest.raises(BadRequest, match=r"texts\[1\] is an empty list.*-no_special_token"):
        to_features(tok, [["a"], [], ["b"]], is_tokenized=True, max_seq_len=None, no_special_token=True)
    (feature,) = to_features(tok, [[]], is_tokenized=True, max_seq_len=None)  # [CLS] [SEP]
    assert feature.tokens == ("[CLS]", "[SEP]")


def test_no_special_token_is_ignored_for_text(tok):
    (feature,) = to_features(tok, ["hello world"], is_tokenized=False, max_seq_len=10, no_special_token=True)
    assert feature.tokens == ("[CLS]", "hello", "world", "[SEP]")


def test_no_special_token_no_limit(tok):
    features = to_features(tok, [["a"], ["a", "b", "c"]], is_tokenized=True, max_seq_len=None, no_special_token=True)
    assert [len(f) for f in features] == [1, 3]


# --- validation -------------------------------------------------------------


# The engine checks input with the client's validator: the same BadRequest, in the same words.
@pytest.mark.parametrize("texts, is_tokenized, match", [
    (["a", "b", 3], False, r"^texts\[2\] is int \(3\), expected str$"),
    ([["a"]], False, r"^texts\[0\] is list \(\['a'\]\), expected str; pass is_tokenized=True for lists of tokens$"),
    ([["a"], "b"], True, r"^texts\[1\] is str \('b'\), expected a list of str \(is_tokenized=True\)$"),
    ([["a", None]], True, r"^texts\[0\]\[1\] is NoneType \(None\), expected str$"),
    ("hello", False, r"^texts is str \('hello'\), expected a list of str; wrap a single sentence in a list: "),
    (["ok", "x \udfff"], False, r"^texts\[1\] holds a lone surrogate '\\udfff' at character 2"),
])
def test_bad_input_is_the_client_s_bad_request(tok, texts, is_tokenized, match):
    with pytest.raises(BadRequest, match=match) as refused:
        to_features(tok, texts, is_tokenized=is_tokenized, max_seq_len=25)
    with pytest.raises(BadRequest) as by_client:
        validate_texts(texts, is_tokenized)
    assert str(refused.value) == str(by_client.value)
    # What to_features raised before (TypeError) still catches it.
    assert isinstance(refused.value, TypeError) and isinstance(refused.value, ValueError)


def test_max_seq_len_must_be_int_or_none(tok):
    with pytest.raises(EncodeError, match="max_seq_len must be an int or None, got str") as info:
        to_features(tok, ["a"], is_tokenized=False, max_seq_len="25")
    assert isinstance(info.value, TypeError)


# --- padding ----------------------------------------------------------------


def test_feature_is_frozen(tok):
    (feature,) = to_features(tok, ["a"], is_tokenized=False, max_seq_len=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        feature.tokens = ()


def test_pad_batch_shapes_mask_and_zero_padding(tok):
    features = to_features(tok, ["hello world", "a ||| b c", ""], is_tokenized=False, max_seq_len=25)
    input_ids, input_mask, type_ids = pad_batch(features, 7)
    for array in (input_ids, input_mask, type_ids):
        assert array.shape == (3, 7)
        assert array.dtype == np.int32
    np.testing.assert_array_equal(input_mask, [[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(type_ids, [[0] * 7, [0, 0, 0, 1, 1, 1, 0], [0] * 7])
    assert list(input_ids[0]) == list(features[0].input_ids) + [0, 0, 0]
    assert list(input_ids[2]) == [101, 102, 0, 0, 0, 0, 0]


def test_pad_batch_rejects_longer_feature():
    feature = Feature(("[CLS]", "a", "[SEP]"), (101, 1037, 102), (0, 0, 0))
    assert pad_batch([feature], 3)[1].sum() == 3
    with pytest.raises(EncodeError, match="feature 0 has 3 tokens"):
        pad_batch([feature], 2)


def test_pad_batch_empty():
    input_ids, input_mask, type_ids = pad_batch([], 4)
    assert input_ids.shape == input_mask.shape == type_ids.shape == (0, 4)
