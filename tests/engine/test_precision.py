"""-fp16 returns float16 vectors, as the original does, computed in the dtype that is fast where the
workers run; -bf16 computes in bfloat16 and returns float32."""

from __future__ import annotations

import numpy as np
import pytest

from bert_serving.server import cpu as cpu_probe
from bert_serving.server.engine import graph
from bert_serving.server.engine.checkpoint import locate_model
from bert_serving.server.config import EngineConfig
from bert_serving.server.engine.encoder import Encoder


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture
def no_fast_bf16(monkeypatch):
    """Pretends this CPU lacks AVX512-BF16 and AMX."""
    monkeypatch.setattr(cpu_probe, 'cpu_has_fast_bf16', lambda: False)


@pytest.mark.parametrize('fields, compute, output', [
    (dict(), 'float32', 'float32'),
    (dict(bf16=True), 'bfloat16', 'float32'),
    (dict(bf16=True, on_gpu=True), 'bfloat16', 'float32'),
    (dict(fp16=True, on_gpu=True), 'float16', 'float16'),
])
def test_dtypes_of_each_flag(fields, compute, output):
    config = EngineConfig(**fields)
    assert (config.compute_dtype, config.output_dtype) == (compute, output)


@pytest.mark.parametrize('fast_bf16, compute', [(True, 'bfloat16'), (False, 'float32')])
def test_fp16_on_a_cpu_computes_in_what_the_cpu_does_fast(fast_bf16, compute, monkeypatch):
    monkeypatch.setattr(cpu_probe, 'cpu_has_fast_bf16', lambda: fast_bf16)
    config = EngineConfig(fp16=True)
    assert (config.compute_dtype, config.output_dtype) == (compute, 'float16')


def test_compute_dtype_is_part_of_the_graph_key(tiny_hf_dir, no_fast_bf16):
    cpu = EngineConfig(model_dir=str(tiny_hf_dir), fp16=True)
    gpu = EngineConfig(model_dir=str(tiny_hf_dir), fp16=True, on_gpu=True)
    plain = EngineConfig(model_dir=str(tiny_hf_dir))
    files = locate_model(cpu)

    keys = {graph.cache_key(config, files) for config in (cpu, gpu, plain)}
    assert len(keys) == 3  # same compute dtype as plain for cpu, but another output dtype


@pytest.mark.parametrize('case', [
    dict(pooling_strategy='REDUCE_MEAN'),
    dict(pooling_strategy='NONE', mask_cls_sep=True),
], ids=lambda case: case['pooling_strategy'])
def test_fp16_vectors_are_float16_and_close_to_float32(case, tiny_google_dir, tiny_texts, encoders):
    full, _ = encoders.get(model_dir=str(tiny_google_dir), **case).encode(tiny_texts)
    encoder = encoders.get(model_dir=str(tiny_google_dir), fp16=True, **case)
    half, _ = encoder.encode(tiny_texts)

    assert half.dtype == np.float16 and half.shape == full.shape
    flat = (half.reshape(-1, half.shape[-1]), full.reshape(-1, full.shape[-1]))
    real = np.abs(flat[1]).sum(-1) > 0  # NONE pooling: padding and masked rows are zero in both
    assert not flat[0][~real].any()
    cosine = _cosine_rows(flat[0][real], flat[1][real])
    assert cosine.min() >= 0.999, f'row {cosine.argmin()} has cosine {cosine.min():.6f}'


def test_fp16_without_fast_bf16_is_the_float32_graph_rounded(tiny_google_dir, tiny_texts, encoders, no_fast_bf16,
                                                             tmp_path):
    full, _ = encoders.get(model_dir=str(tiny_google_dir)).encode(tiny_texts)
    encoder = Encoder(EngineConfig(model_dir=str(tiny_google_dir), fp16=True, graph_tmp_dir=str(tmp_path)))
    try:
        half, _ = encoder.encode(tiny_texts)
    finally:
        encoder.close()

    assert half.dtype == np.float16
    np.testing.assert_array_equal(half, full.astype(np.float16))


def test_bf16_keeps_float32_output(tiny_google_dir, tiny_texts, encoders):
    full, _ = encoders.get(model_dir=str(tiny_google_dir)).encode(tiny_texts)
    vectors, _ = encoders.get(model_dir=str(tiny_google_dir), bf16=True).encode(tiny_texts)

    assert vectors.dtype == np.float32
    assert _cosine_rows(vectors, full).min() >= 0.999


@pytest.mark.parametrize('fields, flags, summary', [
    (dict(), {'avx512_bf16'}, 'float32'),
    (dict(bf16=True), {'avx512_bf16'}, 'bfloat16 (AVX512-BF16)'),
    (dict(bf16=True), {'avx512_bf16', 'amx_bf16'}, 'bfloat16 (AMX)'),
    (dict(bf16=True), set(), 'bfloat16, emulated: no AVX512-BF16/AMX, slower than float32'),
    (dict(fp16=True), {'avx512_bf16'}, 'bfloat16 (AVX512-BF16), float16 out'),
    (dict(fp16=True), set(), 'float32, float16 out'),
    (dict(fp16=True, on_gpu=True), set(), 'float16'),
    (dict(bf16=True, on_gpu=True), set(), 'bfloat16'),
])
def test_the_compute_summary_says_what_the_products_run_in_on_this_cpu(fields, flags, summary, monkeypatch):
    monkeypatch.setattr(cpu_probe, '_cpu_flags', lambda: frozenset(flags))
    assert EngineConfig(**fields).compute_summary == summary


def test_bf16_on_a_cpu_without_it_is_said_in_the_start_up_table(monkeypatch, capfd):
    from bert_serving.server.config import ServerConfig
    from bert_serving.server.service import BertServer

    monkeypatch.setattr(cpu_probe, '_cpu_flags', lambda: frozenset({'avx2'}))
    BertServer(server=ServerConfig(cpu=True, num_worker=1), engine=EngineConfig(engine='fake', bf16=True))
    err = capfd.readouterr().err
    header = next(line for line in err.splitlines() if 'MAX_BATCH_TOKENS' in line)
    row = next(line for line in err.splitlines() if 'WORKER-0' in line)
    assert header.rstrip().endswith('COMPUTE')
    assert row.rstrip().endswith('bfloat16, emulated: no AVX512-BF16/AMX, slower than float32'), row
    assert '-bf16 on this CPU: bfloat16, emulated' in err and 'leave -bf16 out for float32' in err
