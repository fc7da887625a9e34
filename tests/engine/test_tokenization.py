"""Tests for bert_serving.server.engine.tokenization."""

import pytest
import tokenizers

from bert_serving.server.engine.tokenization import BertTokenizer, load_vocab

# `shared_dir` and `bundled_model_dir` come from tests/conftest.py.

TINY_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "un", "##want", "##ed", "want", "runn", "##ing", "play", "##s",
    "a", "##a", "b", ",", ".", "!", "`", "cafe", "café", "οδος", "οδοσ", "α", "中", "文",
]

# Hand-picked text beyond English, compared with the `tokenizers` library. All
# characters here are classified the same by Python and by that library; see
# test_known_differences_from_tokenizers_library for the ones that are not.
MULTILINGUAL = [
    "Café naïve résumé Ångström coöperate",
    "Über Straße ÉCOLE façade Ærøskøbing",
    "中文分词不是必需的",
    "日本語のテキスト、カタカナとひらがな。",
    "문장 인코딩은 감정 분석에 필요하다",
    "Привет, мир! Как дела?",
    "Ελληνικά κείμενα και αριθμοί",
    "مرحبا بالعالم",
    "हिन्दी पाठ का उदाहरण",
    "Emoji 😀👍🏽 ™ © → ∑ are handled",
    "zero\u200bwidth\u200djoiner soft\xadhyphen \ufeffbom",
    "nbsp\xa0here\u3000there x\u2028y\u2029z",
    "tab\tnew\nline\rcr \x00nul\ufffdrep\x0bvt\x7fdel",
    "ﬁ ligature ½ ² ℃ K Ⅻ ⅻ ǅ ſ ŉ ß ẞ ᾈ",
    "İstanbul ıi a\u0301 e\u0308 n\u0303 \u0301leading",
    "«quotes» „German“ ‘single’ —dash– …ellipsis ¿qué? ¡sí!",
    "full－width！ＡＢＣ１２３",
    "$5+3=8 ^caret `tick` |pipe| ~tilde~ a\u1fefb",
    "\U0002B740\U00020000\u3400\uF900\U0002F800",
    "",
    "   ",
]


@pytest.fixture(scope="module")
def minilm_vocab(bundled_model_dir):
    return str(bundled_model_dir / "vocab.txt")


@pytest.fixture(scope="module")
def corpus_lines(shared_dir):
    return (shared_dir / "bench" / "corpus.txt").read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def tiny_vocab_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def tiny(tiny_vocab_file):
    return BertTokenizer(tiny_vocab_file)


@pytest.fixture(scope="module")
def tiny_cased(tiny_vocab_file):
    return BertTokenizer(tiny_vocab_file, do_lower_case=False)


@pytest.fixture(scope="module")
def minilm(minilm_vocab):
    return BertTokenizer(minilm_vocab)


@pytest.fixture(scope="module")
def minilm_cased(minilm_vocab):
    return BertTokenizer(minilm_vocab, do_lower_case=False)


# --- vocabulary -------------------------------------------------------------


def test_load_vocab_ids_are_line_numbers_and_trailing_space_is_stripped(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_bytes("[PAD]\n[UNK] \r\nhello\t\n##lo\n".encode("utf-8"))
    assert load_vocab(str(path)) == {"[PAD]": 0, "[UNK]": 1, "hello": 2, "##lo": 3}


def test_minilm_vocab_size_and_special_ids(minilm):
    assert len(minilm.vocab) == 30522
    assert (minilm.pad_id, minilm.unk_id, minilm.cls_id, minilm.sep_id) == (0, 100, 101, 102)
    assert minilm.inv_vocab[101] == "[CLS]"
    assert all(minilm.vocab[t] == i for i, t in minilm.inv_vocab.items())


def test_missing_special_token_is_rejected(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\n[CLS]\nhello\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"\[SEP\]"):
        BertTokenizer(str(path))


def test_convert_tokens_to_ids_maps_unknown_to_unk(tiny):
    assert tiny.convert_tokens_to_ids(["[CLS]", "want", "Want", "nope", "##ed"]) == [2, 8, 1, 1, 7]


# --- basic tokenization -----------------------------------------------------


def test_wordpiece_greedy_longest_match(tiny):
    assert tiny.tokenize("UNwanted, running!") == ["un", "##want", "##ed", ",", "runn", "##ing", "!"]
    assert tiny.tokenize("plays") == ["play", "##s"]


def test_unmatchable_word_is_one_unk(tiny):
    # "unwantedx" matches "un ##want ##ed" and then gets stuck: no partial output.
    assert tiny.tokenize("unwantedx want") == ["[UNK]", "want"]


def test_word_over_100_chars_is_unk(tiny):
    assert tiny.tokenize("a" * 100) == ["a"] + ["##a"] * 99
    assert tiny.tokenize("a" * 101) == ["[UNK]"]
    assert tiny.tokenize("b " + "a" * 101 + " b") == ["b", "[UNK]", "b"]


def test_word_over_100_chars_is_unk_even_when_the_vocab_holds_it(tmp_path):
    # The original checks max_input_chars_per_word (100) before looking the
    # whole word up; so does the `tokenizers` library.
    long_word, edge_word = "x" * 101, "y" * 100
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(TINY_VOCAB + [long_word, edge_word]) + "\n", encoding="utf-8")
    texts = [long_word, edge_word, f"a {long_word} b", long_word + "!"]
    ours = BertTokenizer(str(path))
    assert ours.tokenize(long_word) == ["[UNK]"]
    assert ours.tokenize(edge_word) == [edge_word]
    assert [ours.tokenize(t) for t in texts] == _library_tokens(str(path), True, texts)


def test_accents_are_stripped_only_when_lower_casing(tiny, tiny_cased):
    assert tiny.tokenize("CAFÉ Café cafe\u0301") == ["cafe", "cafe", "cafe"]
    assert tiny_cased.tokenize("café") == ["café"]
    # Cased mode keeps both the case and the combining mark.
    assert tiny_cased.tokenize("Café cafe\u0301") == ["[UNK]", "[UNK]"]


def test_cjk_ideographs_are_split_but_hangul_and_kana_are_not(minilm):
    assert minilm.tokenize("中文abc") == ["中", "文", "abc"]
    assert minilm.tokenize("\U0002B820x") == ["[UNK]", "x"]
    hangul = minilm.tokenize("한국")
    assert hangul[0] != "[UNK]" and all(t.startswith("##") for t in hangul[1:])
    assert minilm.tokenize("カタカナ") == ["カ", "##タ", "##カ", "##ナ"]


def test_control_characters_are_dropped_and_whitespace_unified(tiny):
    assert tiny.tokenize("a\x00a\ufffda\u200ba\x0ba\x7fa") == ["a", "##a", "##a", "##a", "##a", "##a"]
    assert tiny.tokenize("a\tb\nwant\rplay\xa0b\u3000a") == ["a", "b", "want", "play", "b", "a"]
    assert tiny.tokenize(" \t\n ") == []
    assert tiny.tokenize("") == []


def test_punctuation_includes_ascii_symbols_and_unicode_p(minilm):
    assert minilm.tokenize("a$b+c^d`e|f~g") == ["a", "$", "b", "+", "c", "^", "d", "`", "e", "|", "f", "~", "g"]
    assert minilm.tokenize("¿qué?") == ["¿", "que", "?"]
    # ™ is a symbol (So), not punctuation, so it stays attached to the word.
    assert minilm.tokenize("x™") == ["x", "##™"]


def test_punctuation_produced_by_normalisation_is_split(tiny, tiny_cased):
    # U+1FEF GREEK VARIA decomposes to a backtick; BERT splits after NFD.
    assert tiny.tokenize("a\u1fefb") == ["a", "`", "b"]
    assert tiny_cased.tokenize("a\u1fefb") == ["[UNK]"]


def test_greek_final_sigma_follows_python_lower(tiny):
    assert tiny.tokenize("ΟΔΟΣ. ΟΔΟΣ") == ["οδος", ".", "οδος"]
    # BERT lower-cases whole words before splitting off punctuation, and "." is
    # case-ignorable, so this sigma is not word-final.
    assert tiny.tokenize("ΟΔΟΣ.Α") == ["οδοσ", ".", "α"]


def test_repeated_calls_give_equal_results(minilm):
    text = "Repeated sentences hit the word cache, which must not change results."
    first = minilm.tokenize(text)
    assert minilm.tokenize(text) == first
    first.append("mutated")
    assert minilm.tokenize(text) == first[:-1]


# --- reference checks against the `tokenizers` library ---------------------


def _library_tokens(vocab_file, lowercase, texts):
    reference = tokenizers.BertWordPieceTokenizer(vocab_file, lowercase=lowercase, strip_accents=lowercase)
    return [e.tokens for e in reference.encode_batch(texts, add_special_tokens=False)]


def test_corpus_matches_tokenizers_library_uncased(minilm, minilm_vocab, corpus_lines):
    lines = corpus_lines
    assert len(lines) == 8225
    expected = _library_tokens(minilm_vocab, True, lines)
    mismatched = [i for i, (line, want) in enumerate(zip(lines, expected)) if minilm.tokenize(line) != want]
    assert mismatched == []


def test_corpus_matches_tokenizers_library_cased(minilm_cased, minilm_vocab, corpus_lines):
    lines = corpus_lines[:400]
    expected = _library_tokens(minilm_vocab, False, lines)
    assert [minilm_cased.tokenize(line) for line in lines] == expected


@pytest.mark.parametrize("lowercase", [True, False])
def test_multilingual_matches_tokenizers_library(minilm_vocab, lowercase):
    ours = BertTokenizer(minilm_vocab, do_lower_case=lowercase)
    expected = _library_tokens(minilm_vocab, lowercase, MULTILINGUAL)
    for text, want in zip(MULTILINGUAL, expected):
        assert ours.tokenize(text) == want, repr(text)


def test_known_differences_from_tokenizers_library(minilm):
    # Deliberate: we follow BERT (Python unicodedata), the library does not.
    # U+2B820..U+2B91F is in BERT's CJK ranges (the library starts at U+2B920).
    assert minilm.tokenize("x\U0002B820y") == ["x", "[UNK]", "y"]
    # Unassigned code points (Cn) are "C*" and therefore dropped.
    assert minilm.tokenize("hel\u0378lo") == ["hello"]
    # Greek final sigma uses Python's context-aware lower().
    assert minilm.tokenize("ΟΔΟΣ") == ["ο", "##δ", "##ος"]
