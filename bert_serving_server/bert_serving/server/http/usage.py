"""The token counts of ``POST /v1/embeddings``' ``usage``, computed in the proxy.

OpenAI's reply counts the tokens of the inputs. The server could send its word pieces back with
the vectors (``show_tokens``), but they are the texts themselves, published on port_out; so the
proxy asks for them only when its HTTP caller does (``/encode`` with ``show_tokens``), and counts
here instead, with the model's own tokenizer and the server's flags: each input's word pieces as
the model sees them, ``[CLS]``/``[SEP]`` included, truncated to ``-max_seq_len`` (or, with NONE,
to the model's ``max_position_embeddings``). With ``-engine fake`` it counts what the fake engine
tokenizes.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

from ..config import EngineConfig
from ..engine.features import to_features
from ..engine.tokenization import BertTokenizer

__all__ = ['TokenCounter', 'WORD_CACHE']

# Words whose pieces the proxy's tokenizer keeps between requests (as the ventilator's).
WORD_CACHE = 4096


class TokenCounter:
    """Counts the tokens of a request's inputs the way the workers will cut them.

    Args:
        vocab_file: the model's WordPiece vocabulary; '' for the fake engine.
        do_lower_case: the server's -cased_tokenization, inverted.
        max_seq_len: the server's -max_seq_len; None for NONE.
        max_position_embeddings: the model's position limit (caps NONE).
    """

    def __init__(self, vocab_file: str, do_lower_case: bool = True, max_seq_len: Optional[int] = 25,
                 max_position_embeddings: int = 512):
        self._featurize: Callable[[Sequence[str]], list]
        if vocab_file:
            tokenizer = BertTokenizer(vocab_file, do_lower_case, word_cache_size=WORD_CACHE)
            self._featurize = lambda texts: to_features(tokenizer, texts, is_tokenized=False, max_seq_len=max_seq_len,
                                                        max_position_embeddings=max_position_embeddings)
        else:
            from ..engine.fake import FakeEngine
            engine = FakeEngine(EngineConfig(engine='fake', max_seq_len=max_seq_len, do_lower_case=do_lower_case))
            self._featurize = engine.featurize

    def counts(self, texts: Sequence[str]) -> List[int]:
        """The number of tokens of each text (validated strings), special tokens included."""
        return [len(feature) for feature in self._featurize(texts)]
