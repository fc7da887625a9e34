"""Request texts in, model input arrays out.

A request is a list of sentences, either raw strings or pre-tokenized lists of
tokens. Each becomes a ``Feature`` laid out as BERT expects:

    single:  [CLS] a [SEP]            type ids 0 ... 0
    pair:    [CLS] a [SEP] b [SEP]    type ids 0 ... 0 1 ... 1

Raw strings mark a pair with `` ||| ``; pre-tokenized input marks it with a
token that is exactly ``|||``. ``pad_batch`` then stacks features into the
zero-padded ``[B, T]`` int32 arrays the model consumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np

from bert_serving.client.errors import BadRequest
from bert_serving.client.validation import validate_texts

from ..errors import EncodeError
from .tokenization import CLS_TOKEN, SEP_TOKEN, UNK_TOKEN, BertTokenizer

__all__ = ["Feature", "batch_sizes", "pad_batch", "to_features", "token_counts"]

_PAIR_MARK = " ||| "
_PAIR_SPLIT = "|||"
# A text is tokenized on a prefix of about this many characters per word piece it may keep (English
# averages 4-6 per piece); if the prefix has too few pieces, a longer one is tried.
CUT_CHARS_PER_PIECE = 16
_CUT_SPACES = (" ", "\t", "\n", "\r")


@dataclass(frozen=True)
class Feature:
    """Model inputs of one sentence or sentence pair, before padding.

    Attributes:
        tokens: Word pieces, special tokens included; unknown pre-tokenized
            words appear as ``[UNK]``.
        input_ids: Vocabulary id of each token, same length as ``tokens``.
        type_ids: Segment of each token: 0 for the first sentence, 1 for the
            second sentence of a pair and its closing ``[SEP]``.
    """

    tokens: tuple[str, ...]
    input_ids: tuple[int, ...]
    type_ids: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.tokens)


def to_features(
    tokenizer: BertTokenizer,
    texts: Sequence[str] | Sequence[Sequence[str]],
    *,
    is_tokenized: bool,
    max_seq_len: int | None,
    no_special_token: bool = False,
    max_position_embeddings: int = 512,
) -> list[Feature]:
    """Tokenizes, truncates and lays out a request.

    Args:
        tokenizer: The model's WordPiece tokenizer.
        texts: A list of strings, or when ``is_tokenized`` a list of lists of
            tokens. Empty or whitespace-only inputs give ``[CLS] [SEP]``.
        is_tokenized: Inputs are already split into tokens. Each token is
            looked up as is (no lower-casing, no WordPiece); unknown ones become
            ``[UNK]``.
        max_seq_len: Maximum length of a feature, special tokens included.
            Longer inputs are cut on the right; in a pair the currently longer
            side loses a token first, the second side on ties. None means the
            length of the longest input of this request, capped at
            ``max_position_embeddings``.
        no_special_token: Omit ``[CLS]`` and ``[SEP]``. Only pre-tokenized
            input honours it; raw text always gets special tokens.
        max_position_embeddings: The model's position limit; caps the length
            chosen when ``max_seq_len`` is None.

    Returns:
        One feature per input, in input order.

    Raises:
        BadRequest: If ``texts`` is not a list of str (list of lists of str when
            ``is_tokenized``), or an input has no token at all (pre-tokenized ``[]`` with
            ``no_special_token``); the message names the first bad element.
        EncodeError: If ``max_seq_len`` is not an int or None, or cannot hold
            the special tokens.
    """
    texts, _ = validate_texts(texts, bool(is_tokenized), allow_empty=True)
    specials = not (is_tokenized and no_special_token)
    if is_tokenized:
        parts = [_split_tokenized(tokenizer, tokens) for tokens in texts]
    else:
        # No side of an input keeps more word pieces than the limit (the longest input's length,
        # capped at max_position_embeddings, when there is none).
        need = max_seq_len if isinstance(max_seq_len, int) and max_seq_len > 0 else max_position_embeddings
        parts = [_split_text(tokenizer, text, need) for text in texts]

    if max_seq_len is None:
        longest = max((_full_length(a, b, specials) for a, b in parts), default=0)
        limit = min(longest, max_position_embeddings)
    elif isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int):
        raise EncodeError(f"max_seq_len must be an int or None, got {type(max_seq_len).__name__}")
    else:
        limit = max_seq_len

    features = [_layout(tokenizer, a, b, limit, specials) for a, b in parts]
    if not specials:
        for i, feature in enumerate(features):
            if not feature.input_ids:  # the model would have nothing to compute or pool
                raise BadRequest(f"texts[{i}] is an empty list: with the server's -no_special_token an "
                                 "input must hold at least one token")
    return features


def pad_batch(features: Sequence[Feature], length: int,
              rows: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stacks features into zero-padded arrays.

    Args:
        features: B features, none longer than ``length``.
        length: T, the padded sequence length.
        rows: at least this many rows: the rows past B are inputs of one token, id 0, whose
            outputs the caller drops (a token each, so that every pooling strategy is defined).

    Returns:
        ``(input_ids, input_mask, type_ids)``, each int32 of shape [max(B, rows), T].
        ``input_mask`` is 1 on real tokens and 0 on padding; padding positions
        hold 0 in all three arrays.

    Raises:
        EncodeError: If a feature is longer than ``length``.
    """
    batch = max(len(features), rows)
    input_ids = np.zeros((batch, length), dtype=np.int32)
    input_mask = np.zeros((batch, length), dtype=np.int32)
    type_ids = np.zeros((batch, length), dtype=np.int32)
    for row, feature in enumerate(features):
        n = len(feature.input_ids)
        if n > length:
            raise EncodeError(
                f"feature {row} has {n} tokens, more than the padded length {length}; "
                "truncate with to_features() before padding"
            )
        input_ids[row, :n] = feature.input_ids
        input_mask[row, :n] = 1
        type_ids[row, :n] = feature.type_ids
    input_mask[len(features):, 0] = 1
    return input_ids, input_mask, type_ids


# token_counts runs in the ventilator's loop, so its work per request is bounded: each text is
# counted on its first COUNT_PREFIX_CHARS characters (the worker truncates it at max_seq_len tokens
# anyway), and a request of more than COUNT_BUDGET_CHARS such characters is measured in characters
# instead. The tokenizer does 8-10 MB/s of ordinary text here, under 1 MB/s of text full of rare
# words; the bench request is 0.33 MB.
COUNT_PREFIX_CHARS = 1_000
COUNT_BUDGET_CHARS = 1_000_000


def token_counts(tokenizer: BertTokenizer, texts: Sequence, is_tokenized: bool) -> list[int]:
    """The length of each input, by which the ventilator sorts a large request into pieces, so that
    the inputs of one piece have about the same length: its word pieces before special tokens and
    truncation (a pre-tokenized input: its tokens). Past COUNT_BUDGET_CHARS the whole request is
    measured in characters. An element of the wrong type counts 0 here; the worker reports it.
    """
    if is_tokenized:
        return [len(t) if isinstance(t, (list, tuple)) else 0 for t in texts]
    strings = [t if isinstance(t, str) else '' for t in texts]
    if sum(min(len(t), COUNT_PREFIX_CHARS) for t in strings) > COUNT_BUDGET_CHARS:
        return [len(t) for t in strings]
    return [len(tokenizer.tokenize(t[:COUNT_PREFIX_CHARS])) for t in strings]


def _split_text(tokenizer: BertTokenizer, text: str, need: int) -> tuple[list[str], list[str] | None]:
    if _PAIR_MARK in text:
        first, second = text.split(_PAIR_SPLIT, 1)
        return _leading_pieces(tokenizer, first.strip(), need), _leading_pieces(tokenizer, second.strip(), need)
    return _leading_pieces(tokenizer, text, need), None


def _leading_pieces(tokenizer: BertTokenizer, text: str, need: int) -> list[str]:
    """The word pieces of ``text``, or of a prefix of it that has at least ``need`` of them.

    A text of up to 64 MiB would take seconds to tokenize whole, for at most ``need`` pieces. The
    prefix ends at a space, tab or line break, which the tokenizer treats as whitespace: every step
    before WordPiece maps characters one by one (the Greek final sigma, lower-cased by context, ends
    at whitespace too), and splitting into words comes before anything else that spans characters,
    so the prefix's pieces are the first pieces of the whole text. ``need`` of them leave the layout
    unchanged: a single input keeps at most limit - 2, each side of a pair at most limit - 3, and
    the side of a pair that has more than the budget loses the same tokens whatever its length.
    A prefix with fewer (words the tokenizer drops, long words with no space) is grown fourfold.
    """
    chars = need * CUT_CHARS_PER_PIECE
    while chars < len(text):
        cut = max(text.rfind(space, 0, chars) for space in _CUT_SPACES)
        if cut > 0:
            pieces = tokenizer.tokenize(text[:cut])
            if len(pieces) >= need:
                return pieces
        chars *= 4
    return tokenizer.tokenize(text)


def _split_tokenized(tokenizer: BertTokenizer, tokens: Sequence[str]) -> tuple[list[str], list[str] | None]:
    vocab = tokenizer.vocab
    known = [t if t in vocab else UNK_TOKEN for t in tokens]
    try:
        cut = list(tokens).index(_PAIR_SPLIT)
    except ValueError:
        return known, None
    return known[:cut], known[cut + 1:]


def _full_length(a: list[str], b: list[str] | None, specials: bool) -> int:
    n_special = (2 if b is None else 3) if specials else 0
    return len(a) + (0 if b is None else len(b)) + n_special


def _pair_lengths(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Lengths left after popping from the longer side (b on ties) until they fit.

    Equivalent to the pop loop, in constant time: the longer side shrinks to
    the shorter one's length, then the two shrink alternately, b first.
    """
    if len_a + len_b <= budget:
        return len_a, len_b
    shorter = min(len_a, len_b)
    if budget - shorter >= shorter:
        return (len_a, budget - len_a) if len_a == shorter else (budget - len_b, len_b)
    return budget - budget // 2, budget // 2


def _layout(
    tokenizer: BertTokenizer, a: list[str], b: list[str] | None, limit: int, specials: bool
) -> Feature:
    if b is None:
        budget = limit - (2 if specials else 0)
        if budget < 0:
            raise EncodeError(f"max_seq_len={limit} is too short: a sentence needs 2 tokens for [CLS] and [SEP]")
        a = a[:budget]
        tokens = [CLS_TOKEN, *a, SEP_TOKEN] if specials else a
        type_ids = [0] * len(tokens)
    else:
        budget = limit - (3 if specials else 0)
        if budget < 0:
            raise EncodeError(f"max_seq_len={limit} is too short: a pair needs 3 tokens for [CLS] and two [SEP]")
        len_a, len_b = _pair_lengths(len(a), len(b), budget)
        a, b = a[:len_a], b[:len_b]
        if specials:
            tokens = [CLS_TOKEN, *a, SEP_TOKEN, *b, SEP_TOKEN]
            type_ids = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        else:
            tokens = a + b
            type_ids = [0] * len(a) + [1] * len(b)
    return Feature(tuple(tokens), tuple(tokenizer.convert_tokens_to_ids(tokens)), tuple(type_ids))


def batch_sizes(largest: int) -> List[int]:
    """1, 2, 3, 4, 6, 8, 12, 16, ... up to ``largest``, which is always one of them."""
    sizes, power = {largest}, 1
    while power <= largest:
        sizes.update(s for s in (power, 3 * power // 2) if 0 < s <= largest)
        power *= 2
    return sorted(sizes)
