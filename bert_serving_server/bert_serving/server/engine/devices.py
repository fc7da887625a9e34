"""Which device each worker runs on, how many CPU threads it gets, and what the CPU can do fast."""
from __future__ import annotations

import functools
import logging
import os
import platform
import sys
from typing import List, Sequence, Tuple

__all__ = ['plan_devices', 'cpu_threads', 'planned_layer_shards', 'session_threads', 'cpu_has_fast_bf16',
           'onednn_enabled']

# /proc/cpuinfo flags of the instructions that make bfloat16 matrix products faster than float32.
_BF16_FLAGS = frozenset({'avx512_bf16', 'amx_bf16'})


def _available_gpus(limit: int) -> Tuple[int, List[int]]:
    """(number of GPUs, ids of the free ones), from nvidia-smi through GPUtil."""
    import GPUtil
    gpus = GPUtil.getGPUs()
    free = GPUtil.getAvailable(order='memory', limit=max(limit, 1), maxLoad=0.9, maxMemory=0.9)
    return len(gpus), list(free)


def plan_devices(num_worker: int, cpu: bool, device_map: Sequence[int],
                 logger: logging.Logger) -> List[int]:
    """Returns one device id per worker, -1 meaning CPU.

    GPUs come from ``device_map`` if given (reused round-robin), else from the
    free GPUs GPUtil reports. Without nvidia-smi, or with no free GPU, every
    worker falls back to the CPU with a warning.
    """
    if cpu:
        return [-1] * num_worker
    try:
        total, free = _available_gpus(num_worker)
    except Exception as e:  # GPUtil raises when nvidia-smi is absent or fails
        logger.warning('no usable nvidia-smi (%s): no GPU on this machine? falling back to CPU', e)
        return [-1] * num_worker
    if total == 0 or (not free and not device_map):
        logger.warning('no free GPU found, falling back to CPU')
        return [-1] * num_worker
    chosen = list(device_map) or free
    if len(chosen) < num_worker:
        logger.warning('%d workers share %d GPU(s) %s: this may not scale and may run out of memory',
                       num_worker, len(chosen), chosen)
    return [chosen[i % len(chosen)] for i in range(num_worker)]


def cpu_threads(num_cpu_workers: int) -> int:
    """The CPU cores each CPU worker gets: the cores split evenly, at least one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    return max(1, cores // max(1, num_cpu_workers))


# A block split in two runs a one-sentence request in ~5 ms instead of ~7.5 on two cores
# (docs/benchmark.md). More parts than two were never measured, so a worker with more cores splits
# in two and gives each part's ops the rest of its cores as intra-op threads.
MAX_LAYER_SHARDS = 2


def planned_layer_shards(threads: int, on_gpu: bool = False) -> int:
    """How many parts a worker splits each transformer block into: with ``threads`` CPU cores, up to
    MAX_LAYER_SHARDS; none (1) when the graph also serves a GPU."""
    return 1 if on_gpu else max(1, min(int(threads), MAX_LAYER_SHARDS))


def session_threads(threads: int, shards: int) -> Tuple[int, int]:
    """(intra_op, inter_op) threads of a CPU worker's session: one inter-op thread per part of a
    block (``shards``, from modeling.layer_shards), so that the parts run side by side, and the
    cores left over as intra-op threads of each op."""
    shards = max(1, int(shards))
    return max(1, int(threads) // shards), shards


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset:
    """The CPU's feature flags from /proc/cpuinfo (empty where that file does not exist, e.g. macOS)."""
    try:
        with open('/proc/cpuinfo', encoding='utf-8', errors='replace') as f:
            for line in f:
                if line.startswith('flags'):
                    return frozenset(line.split(':', 1)[-1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """True if this CPU has AVX512-BF16 or AMX-BF16."""
    return not _BF16_FLAGS.isdisjoint(_cpu_flags())


# TensorFlow turns its oneDNN optimisations on by default on Linux x86-64 for CPUs with one of these
# (its DefaultOneDnnPolicy: AVX512-VNNI, AVX512-BF16, AVX-VNNI or AMX), and off elsewhere.
_ONEDNN_DEFAULT_FLAGS = frozenset({'avx512_vnni', 'avx512_bf16', 'avx_vnni', 'amx_tile', 'amx_int8', 'amx_bf16'})


def onednn_enabled() -> bool:
    """True if TensorFlow's oneDNN optimisations are on in this process's environment:
    ``TF_ENABLE_ONEDNN_OPTS`` when it says 0/1 (false/true), else TensorFlow's default rule above.
    Read without importing TensorFlow, so that a cache lookup stays cheap."""
    value = os.environ.get('TF_ENABLE_ONEDNN_OPTS', '').strip().lower()
    if value in ('0', 'false'):
        return False
    if value in ('1', 'true'):
        return True
    return (sys.platform.startswith('linux') and platform.machine().lower() in ('x86_64', 'amd64')
            and not _ONEDNN_DEFAULT_FLAGS.isdisjoint(_cpu_flags()))
