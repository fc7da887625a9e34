"""A worker imports TensorFlow's runtime without its public API (engine/tfimport.py).

The public API and the Keras it drags in (with scikit-learn, SciPy and h5py when installed)
cost a worker about 230 MiB and 2 s of start-up, and a GraphRunner uses none of them. Each test
runs in a fresh process, since the stand-in only works before anything imported TensorFlow.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

TEXTS = ['hello world', 'the quick brown fox jumps over the lazy dog', 'a', 'hello world ' * 20]

SCRIPT = r'''
import json, sys
from bert_serving.server.engine.tfimport import defer_public_api
first, second = defer_public_api(), defer_public_api()
import numpy as np
from bert_serving.server.config import EngineConfig
from bert_serving.server.engine.encoder import Encoder
enc = Encoder(EngineConfig(model_dir=sys.argv[1], graph_tmp_dir=sys.argv[2], max_seq_len=32))
enc.warm_up()
vectors = enc.run(enc.featurize(json.loads(sys.argv[3])))
np.save(sys.argv[4], vectors)
report = {
    'first': first, 'second': second,
    'deferred_after_run': type(sys.modules['tensorflow']).__name__,
    'api_modules_after_run': sorted(m for m in sys.modules if m.startswith('tensorflow._api')
                                    and sys.modules[m] is not None)[:5],
    'optional_after_run': {m: m in sys.modules and sys.modules[m] is not None
                           for m in ('keras', 'sklearn', 'scipy', 'h5py')},
}
try:
    import keras  # noqa: F401
    report['keras_import'] = 'imported'
except ImportError:
    report['keras_import'] = 'ImportError'
import tensorflow as tf  # the public API, loaded on first use
report['version'] = tf.__version__
report['eager_sum'] = float(tf.reduce_sum(tf.constant([1.5, 2.5])).numpy())
report['graph_class'] = tf.Graph.__name__
report['deferred_after_api'] = type(sys.modules['tensorflow']).__name__
print('REPORT ' + json.dumps(report))
'''


def _run_deferred(model_dir, cache_dir, out_path) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
    proc = subprocess.run([sys.executable, '-c', SCRIPT, str(model_dir), str(cache_dir), json.dumps(TEXTS),
                           str(out_path)], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith('REPORT '))
    return json.loads(line[len('REPORT '):])


def test_a_deferred_process_runs_the_graph_without_the_public_api_and_loads_it_on_demand(
        tiny_hf_dir, graph_cache_dir, tmp_path, encoders):
    encoders.get(model_dir=str(tiny_hf_dir), max_seq_len=32)  # the graph is cached, as a worker finds it
    report = _run_deferred(tiny_hf_dir, graph_cache_dir, tmp_path / 'v.npy')
    assert report['first'] is True and report['second'] is False
    # The whole encode ran on the runtime alone: the package's __init__ never ran.
    assert report['deferred_after_run'] == '_DeferredPackage'
    assert report['api_modules_after_run'] == []
    assert report['optional_after_run'] == {'keras': False, 'sklearn': False, 'scipy': False, 'h5py': False}
    assert report['keras_import'] == 'ImportError'
    # Reading from the package loads the real public API into the same module object.
    assert report['deferred_after_api'] == 'module'
    assert report['graph_class'] == 'Graph'
    assert report['eager_sum'] == 4.0
    import tensorflow as tf
    assert report['version'] == tf.__version__


def test_the_deferred_runtime_gives_the_same_vectors_as_a_full_import(tiny_hf_dir, graph_cache_dir, tmp_path,
                                                                       encoders):
    enc = encoders.get(model_dir=str(tiny_hf_dir), max_seq_len=32)
    full = enc.run(enc.featurize(TEXTS))
    _run_deferred(tiny_hf_dir, graph_cache_dir, tmp_path / 'v.npy')
    deferred = np.load(tmp_path / 'v.npy')
    assert deferred.shape == full.shape == (len(TEXTS), enc.output_dim)
    np.testing.assert_array_equal(deferred, full)


def test_nothing_changes_once_tensorflow_is_imported():
    import tensorflow  # noqa: F401
    from bert_serving.server.engine.tfimport import defer_public_api
    before = sys.modules['tensorflow']
    assert defer_public_api() is False
    assert sys.modules['tensorflow'] is before


def test_importing_a_part_of_the_generated_api_loads_the_public_api_first():
    """``tensorflow.compat`` is not in the package's directory: the real ``__init__`` puts the
    generated API on the package's path. Such an import must load the API, and then find the same
    module as ``tf.compat.v1``; the import hook goes away with the stand-in."""
    script = r'''
import sys
from bert_serving.server.engine.tfimport import _ApiImportHook, defer_public_api
assert defer_public_api()
from tensorflow.python.client import session  # in the package's directory: stays deferred
assert type(sys.modules['tensorflow']).__name__ == '_DeferredPackage'
import tensorflow.compat.v1 as tf1
assert type(sys.modules['tensorflow']).__name__ == 'module'
import tensorflow as tf
assert tf.compat.v1 is tf1, (tf.compat.v1, tf1)
assert not any(isinstance(f, _ApiImportHook) for f in sys.meta_path)
print('OK', tf1.GraphDef.__name__)
'''
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
    proc = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] == ['OK', 'GraphDef']
