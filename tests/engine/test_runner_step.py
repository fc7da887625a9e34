"""runner._step: the session call both towers go through, without Session.run's Python layer."""

from __future__ import annotations

import numpy as np
import pytest


def _feeds(encoder, texts):
    from bert_serving.server.engine.features import pad_batch

    features = encoder.featurize(texts)
    return pad_batch(features, max(len(f.input_ids) for f in features))


@pytest.mark.parametrize('texts', [['hello world'], ['hello world', 'the quick brown fox jumps over the lazy dog'] * 6],
                         ids=['narrow', 'wide'])
def test_a_step_returns_what_session_run_returns(tiny_google_dir, encoders, texts):
    """Each tower's step gives Session.run's array, bit for bit, also for int64 and non-contiguous feeds."""
    from bert_serving.server.engine.modeling import (ATTENTION_SLOTS_NAME, INPUT_NAMES, NARROW_PREFIX, OUTPUT_NAME,
                                                      TOKEN_INDEX_NAME)
    from bert_serving.server.engine.runner import _step

    encoder = encoders.get(model_dir=str(tiny_google_dir), pooling_layer=(-1,))
    runner = encoder.runner
    ids, mask, types = _feeds(encoder, texts)
    narrow = len(texts) == 1
    fetch = runner._graph.get_tensor_by_name((NARROW_PREFIX if narrow else '') + OUTPUT_NAME + ':0')
    values = (ids, mask, types) if narrow else runner.wide_feeds(ids, mask, types)
    names = list(INPUT_NAMES) if narrow else list(INPUT_NAMES) + [TOKEN_INDEX_NAME, ATTENTION_SLOTS_NAME]
    placeholders = [runner._graph.get_tensor_by_name(n + ':0') for n in names]
    expected = runner._session.run(fetch, dict(zip(placeholders, values)))

    step = _step(runner._session, fetch, placeholders)
    first = step(*values)
    assert first.dtype == expected.dtype and np.array_equal(first, expected)
    wide_ints = [np.asfortranarray(v.astype(np.int64)) if v.ndim == 2 else v.astype(np.int64) for v in values]
    assert np.array_equal(step(*wide_ints), expected)
    # Another input's call leaves the first result as it was (no buffer of TensorFlow's reused under it).
    kept = first.copy()
    other = _feeds(encoder, ['a completely different sentence about rivers'] * len(texts))
    other_values = other if narrow else runner.wide_feeds(*other)
    assert not np.array_equal(step(*other_values), kept)
    assert np.array_equal(first, kept)
    with pytest.raises(ValueError, match='dimensions'):
        step(ids[np.newaxis], *values[1:])


def test_without_the_c_function_a_step_is_make_callable(tiny_google_dir, encoders, monkeypatch):
    """Another TensorFlow without TF_SessionRun_wrapper: the step falls back to make_callable."""
    from tensorflow.python.client import pywrap_tf_session

    from bert_serving.server.engine.modeling import INPUT_NAMES, NARROW_PREFIX, OUTPUT_NAME
    from bert_serving.server.engine.runner import _step

    encoder = encoders.get(model_dir=str(tiny_google_dir), pooling_layer=(-1,))
    runner = encoder.runner
    ids, mask, types = _feeds(encoder, ['hello world'])
    fetch = runner._graph.get_tensor_by_name(NARROW_PREFIX + OUTPUT_NAME + ':0')
    placeholders = [runner._graph.get_tensor_by_name(n + ':0') for n in INPUT_NAMES]
    fast = _step(runner._session, fetch, placeholders)(ids, mask, types)
    monkeypatch.delattr(pywrap_tf_session, 'TF_SessionRun_wrapper')
    step = _step(runner._session, fetch, placeholders)
    monkeypatch.undo()  # Session.run itself calls it
    assert step.__name__ != 'step'  # Session.make_callable's function
    assert np.array_equal(step(ids, mask, types), fast)


def test_a_step_on_a_closed_or_deleted_session_raises(tiny_google_dir, graph_cache_dir):
    """A closed session raises Session.run's RuntimeError; so does a deleted one (its C session is
    None, which the C function would dereference)."""
    from bert_serving.server.config import EngineConfig
    from bert_serving.server.engine.encoder import Encoder
    from bert_serving.server.engine.features import pad_batch

    encoder = Encoder(EngineConfig(model_dir=str(tiny_google_dir), pooling_layer=(-1,), graph_tmp_dir=str(graph_cache_dir)))
    features = encoder.featurize(['hello world'])
    assert encoder.run(features).shape == (1, encoder.output_dim)
    step, session = encoder.runner._run_narrow, encoder.runner._session
    encoder.close()
    with pytest.raises(RuntimeError, match='closed Session'):
        encoder.run(features)
    session.__del__()  # what the garbage collector does: the C session is freed, the attribute None
    assert session._session is None
    with pytest.raises(RuntimeError, match='closed Session'):
        step(*pad_batch(features, len(features[0].input_ids)))


def test_two_threads_run_steps_at_once(tiny_google_dir, encoders):
    """The Encoder runs two calls side by side: each thread gets its own input's vectors."""
    import concurrent.futures

    encoder = encoders.get(model_dir=str(tiny_google_dir), pooling_layer=(-1,))
    texts = ['hello world', 'the quick brown fox jumps over the lazy dog', 'rivers run to the sea', 'a b c d e f g']
    batches = [_feeds(encoder, [t] * 12) for t in texts]
    expected = [encoder.runner.run_batch(*b)[0] for b in batches]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for _ in range(5):
            got = list(pool.map(lambda b: encoder.runner.run_batch(*b)[0], batches))
            assert all(np.allclose(g, e, atol=1e-6) for g, e in zip(got, expected))


def test_a_step_keeps_its_session_alive(tiny_google_dir, graph_cache_dir):
    """A step outlives the runner that made it: it holds the Session, so TensorFlow never deletes the
    C session under it (the step read a raw handle before, which then pointed at freed memory)."""
    import gc

    from bert_serving.server.config import EngineConfig
    from bert_serving.server.engine.encoder import Encoder
    from bert_serving.server.engine.features import pad_batch

    encoder = Encoder(EngineConfig(model_dir=str(tiny_google_dir), pooling_layer=(-1,), graph_tmp_dir=str(graph_cache_dir)))
    features = encoder.featurize(['hello world'])
    expected = encoder.run(features)
    step = encoder.runner._run_narrow
    ids, mask, types = pad_batch(features, len(features[0].input_ids))
    del encoder
    gc.collect()
    assert np.allclose(step(ids, mask, types), expected, atol=1e-6)
