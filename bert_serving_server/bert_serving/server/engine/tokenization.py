"""BERT WordPiece tokenizer: raw text in, word pieces and vocabulary ids out.

The tokenizer runs on the server's hot path, once per sentence of every request,
so it is written to stay in C-level string methods as much as possible:

* Character classes (control, whitespace, CJK, punctuation, combining mark) are
  applied with ``str.translate`` over tables that fill themselves lazily, one
  ``unicodedata`` lookup per distinct code point over the process lifetime.
* Pure-ASCII text, by far the common case, skips NFD and the CJK check.
* WordPiece results are memoised per word in a bounded LRU cache.

The semantics follow the original BERT basic tokenizer exactly: drop control
characters, U+0000 and U+FFFD; treat tab, newline, carriage return and Unicode
``Zs`` as whitespace; isolate CJK ideographs; optionally lower-case, then NFD and
strip ``Mn`` marks; isolate punctuation; then greedy longest-match-first
WordPiece with ``##`` continuations.
"""

from __future__ import annotations

import functools
import itertools
import unicodedata
from typing import Iterable

__all__ = ["CLS_TOKEN", "PAD_TOKEN", "SEP_TOKEN", "UNK_TOKEN", "BertTokenizer", "load_vocab"]

UNK_TOKEN = "[UNK]"
CLS_TOKEN = "[CLS]"
SEP_TOKEN = "[SEP]"
PAD_TOKEN = "[PAD]"

_CONTINUATION = "##"
_MAX_CHARS_PER_WORD = 100
_WORD_CACHE_SIZE = 1 << 16

# Code point blocks that BERT treats as CJK ideographs (one token per character).
# Hangul and kana are deliberately absent: BERT does not split them.
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def load_vocab(path: str) -> dict[str, int]:
    """Reads a WordPiece vocabulary file.

    Args:
        path: UTF-8 text file with one token per line; a token's id is its
            zero-based line number.

    Returns:
        Mapping from token to id. Trailing whitespace (including the newline) is
        removed from each line; a token listed twice keeps its last id.
    """
    vocab: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for index, line in enumerate(f):
            vocab[line.rstrip()] = index
    return vocab


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _is_punctuation(cp: int) -> bool:
    # BERT counts every non-alphanumeric printable ASCII character as
    # punctuation, even the ones Unicode files under symbols ($, +, ^, ...).
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(chr(cp)).startswith("P")


def _is_whitespace(cp: int) -> bool:
    return cp in (0x20, 0x09, 0x0A, 0x0D) or unicodedata.category(chr(cp)) == "Zs"


def _is_dropped(cp: int) -> bool:
    # Tab, newline and carriage return are category Cc but count as whitespace.
    if cp in (0x09, 0x0A, 0x0D):
        return False
    return cp in (0, 0xFFFD) or unicodedata.category(chr(cp)).startswith("C")


class _LazyTable(dict):
    """A ``str.translate`` table that computes and caches missing entries.

    ``str.translate`` looks each code point up with ``__getitem__``, so a dict
    subclass with ``__missing__`` lets the per-character rule run in Python once
    per distinct code point, and in C for every later occurrence.
    """

    def __init__(self, rule):
        super().__init__()
        self._rule = rule

    def __missing__(self, cp: int):
        value = self._rule(cp)
        self[cp] = value
        return value


def _spaced(cp: int) -> str:
    return f" {chr(cp)} "


def _clean_rule(cp: int, split_punctuation: bool):
    """Pass 1: drop controls, unify whitespace, isolate CJK (and punctuation)."""
    if _is_dropped(cp):
        return None
    if _is_whitespace(cp):
        return " "
    if _is_cjk(cp) or (split_punctuation and _is_punctuation(cp)):
        return _spaced(cp)
    return cp


def _after_nfd_rule(cp: int):
    """Pass 2 (lower-cased text after NFD): strip marks, isolate punctuation."""
    if unicodedata.category(chr(cp)) == "Mn":
        return None
    if _is_punctuation(cp):
        return _spaced(cp)
    return cp


# ASCII needs neither NFD nor the CJK check, so its table is complete up front.
_ASCII_TABLE = {
    cp: rule for cp in range(128) if (rule := _clean_rule(cp, split_punctuation=True)) != cp
}

# Shared by every tokenizer: the tables depend only on Unicode, not on a vocab.
_CLEAN_AND_SPLIT = _LazyTable(functools.partial(_clean_rule, split_punctuation=True))
_CLEAN_ONLY = _LazyTable(functools.partial(_clean_rule, split_punctuation=False))
_AFTER_NFD = _LazyTable(_after_nfd_rule)


def _basic_tokenize(text: str, do_lower_case: bool) -> list[str]:
    """Splits text into words and punctuation the way BERT's basic tokenizer does."""
    if text.isascii():
        if do_lower_case:
            text = text.lower()
        return text.translate(_ASCII_TABLE).split()
    if not do_lower_case:
        return text.translate(_CLEAN_AND_SPLIT).split()
    # Lower-casing and NFD may turn a character into punctuation (U+1FEF becomes
    # a backtick), so punctuation is split only after both have run. Python's
    # lower() is context-sensitive for the Greek final sigma, which is why it
    # must also see words before punctuation splits them, as BERT does.
    text = text.translate(_CLEAN_ONLY).lower()
    text = unicodedata.normalize("NFD", text)
    return text.translate(_AFTER_NFD).split()


class BertTokenizer:
    """Basic tokenization followed by WordPiece over a fixed vocabulary.

    Instances are safe to share between threads: the only mutable state is the
    word cache, which is a ``functools.lru_cache``.

    Attributes:
        vocab: Mapping from token to id.
        inv_vocab: Mapping from id to token.
        do_lower_case: Whether text is lower-cased and stripped of accents.
    """

    def __init__(self, vocab_file: str, do_lower_case: bool = True, word_cache_size: int = _WORD_CACHE_SIZE):
        """Loads the vocabulary.

        Args:
            vocab_file: Path of a ``vocab.txt`` file, one token per line.
            do_lower_case: True for uncased models: lower-case, then strip
                accents. False for cased models: text is kept as is.
            word_cache_size: Words whose pieces are kept (least recently used
                go first); a full cache of rare words holds ~100 MB.

        Raises:
            ValueError: If the vocabulary lacks [UNK], [CLS], [SEP] or [PAD].
        """
        self.vocab = load_vocab(vocab_file)
        missing = [t for t in (UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, PAD_TOKEN) if t not in self.vocab]
        if missing:
            raise ValueError(
                f"vocabulary {vocab_file!r} lacks the special token(s) {missing}; "
                "check that it is a BERT vocab.txt"
            )
        self.inv_vocab = {i: t for t, i in self.vocab.items()}
        self.do_lower_case = do_lower_case
        # Bounds the inner WordPiece loop: no piece can be longer than this.
        self._max_piece_chars = max(
            len(t[len(_CONTINUATION):]) if t.startswith(_CONTINUATION) else len(t)
            for t in self.vocab
        )
        self._wordpiece = functools.lru_cache(maxsize=word_cache_size)(self._wordpiece_uncached)

    @property
    def unk_id(self) -> int:
        """Id of the [UNK] token."""
        return self.vocab[UNK_TOKEN]

    @property
    def cls_id(self) -> int:
        """Id of the [CLS] token."""
        return self.vocab[CLS_TOKEN]

    @property
    def sep_id(self) -> int:
        """Id of the [SEP] token."""
        return self.vocab[SEP_TOKEN]

    @property
    def pad_id(self) -> int:
        """Id of the [PAD] token."""
        return self.vocab[PAD_TOKEN]

    def tokenize(self, text: str) -> list[str]:
        """Splits a text into word pieces.

        Args:
            text: Any string; it may be empty.

        Returns:
            Word pieces, continuations prefixed with ``##``. A word that cannot
            be covered by vocabulary pieces, or is longer than 100 characters,
            becomes a single ``[UNK]``.
        """
        words = _basic_tokenize(text, self.do_lower_case)
        return list(itertools.chain.from_iterable(map(self._wordpiece, words)))

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        """Looks tokens up in the vocabulary.

        Args:
            tokens: Tokens, used exactly as given.

        Returns:
            One id per token; a token not in the vocabulary gets the [UNK] id.
        """
        get = self.vocab.get
        unk = self.unk_id
        return [get(t, unk) for t in tokens]

    def _wordpiece_uncached(self, word: str) -> tuple[str, ...]:
        """Greedy longest-match-first WordPiece split of a single word."""
        # The length check comes first, as in the original: a word over the
        # limit is [UNK] even when the vocabulary holds it whole.
        n = len(word)
        if n > _MAX_CHARS_PER_WORD:
            return (UNK_TOKEN,)
        vocab = self.vocab
        if word in vocab:
            return (word,)
        pieces = []
        start = 0
        while start < n:
            end = min(n, start + self._max_piece_chars)
            prefix = _CONTINUATION if start else ""
            while end > start:
                piece = prefix + word[start:end]
                if piece in vocab:
                    break
                end -= 1
            else:
                return (UNK_TOKEN,)
            pieces.append(piece)
            start = end
        return tuple(pieces)
