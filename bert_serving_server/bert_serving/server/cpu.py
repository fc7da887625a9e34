"""What this machine's CPU offers: its cores, its feature flags, and what TensorFlow makes of them.

Read from the operating system without importing TensorFlow, so that the config (which decides the
graph's dtype and layer-norm form from these) and a graph-cache lookup stay cheap. The lowest floor
of the server: it imports nothing of the package.
"""
from __future__ import annotations

import functools
import os
import platform
import sys

__all__ = ['available_cores', 'cpu_has_fast_bf16', 'fast_bf16_name', 'onednn_enabled']

# /proc/cpuinfo flags of the instructions that make bfloat16 matrix products faster than float32.
_BF16_FLAGS = frozenset({'avx512_bf16', 'amx_bf16'})


def available_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)


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


def fast_bf16_name() -> str:
    """'AMX' or 'AVX512-BF16', whichever bfloat16 instructions this CPU has best; '' for none."""
    flags = _cpu_flags()
    return 'AMX' if 'amx_bf16' in flags else 'AVX512-BF16' if 'avx512_bf16' in flags else ''


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
