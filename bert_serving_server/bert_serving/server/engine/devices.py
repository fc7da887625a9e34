"""Which device each worker runs on, and how many CPU threads and batch tokens it gets (what the CPU
itself can do is probed in ``..cpu``)."""
from __future__ import annotations

import logging
from typing import Callable, List, Optional, Sequence, Tuple

from ..cpu import available_cores

__all__ = ['plan_devices', 'cpu_threads', 'cpu_oversubscription', 'batch_token_budget',
           'CPU_BATCH_TOKENS', 'planned_layer_shards', 'session_threads']

# Padded tokens per model call on a CPU: 4096 ran 1.5x faster than 16384 (smaller activations stay in
# cache; docs/benchmark-history.md). A GPU wants whole batches; there the budget is the original's batch.
CPU_BATCH_TOKENS = 4096
# With -max_seq_len NONE an input is as long as BERT takes: the position embeddings of BERT-base.
LONGEST_INPUT = 512



def _available_gpus(limit: int) -> Tuple[int, List[int]]:
    """(number of GPUs, ids of the free ones), from nvidia-smi through GPUtil."""
    import GPUtil
    gpus = GPUtil.getGPUs()
    free = GPUtil.getAvailable(order='memory', limit=max(limit, 1), maxLoad=0.9, maxMemory=0.9)
    return len(gpus), list(free)


def plan_devices(num_worker: int, cpu: bool, device_map: Sequence[int], logger: logging.Logger,
                 available: Callable[[int], Tuple[int, List[int]]] = _available_gpus) -> List[int]:
    """Returns one device id per worker, -1 meaning CPU.

    GPUs come from ``device_map`` if given (reused round-robin), else from the
    free GPUs GPUtil reports. Without nvidia-smi, or with no free GPU, every
    worker falls back to the CPU with a warning. More workers than GPUs put
    several workers on one GPU: one warning line says so, with the numbers.

    Args:
        available: ``available(limit)`` -> (GPUs seen, ids of the free ones); GPUtil's by
            default (tests pass lists of their own).
    """
    if cpu:
        return [-1] * num_worker
    try:
        total, free = available(num_worker)
    except Exception as e:  # GPUtil raises when nvidia-smi is absent or fails
        logger.warning('no usable nvidia-smi (%s): no GPU on this machine? falling back to CPU', e)
        return [-1] * num_worker
    if total == 0 or (not free and not device_map):
        logger.warning('no free GPU found, falling back to CPU')
        return [-1] * num_worker
    chosen = list(device_map) or free
    gpus = len(set(chosen))
    if num_worker > gpus:
        logger.warning('-num_worker %d exceeds the %d GPU(s) it can use %s (%d seen): %d workers share one GPU, '
                       'each with a copy of the model; this may run it out of memory. Use -num_worker %d, or '
                       '-device_map to choose', num_worker, gpus, sorted(set(chosen)), total,
                       -(-num_worker // gpus), gpus)
    return [chosen[i % len(chosen)] for i in range(num_worker)]


def cpu_threads(num_cpu_workers: int) -> int:
    """The CPU cores each CPU worker gets: the cores split evenly, at least one."""
    return max(1, available_cores() // max(1, num_cpu_workers))


def cpu_oversubscription(num_cpu_workers: int, threads: int, cores: int) -> Optional[str]:
    """The warning (one line, with the numbers) when CPU workers x their threads exceed the cores,
    else None. Each worker gets at least one thread, so that happens with more workers than cores."""
    if num_cpu_workers * threads <= cores:
        return None
    return (f'{num_cpu_workers} CPU workers x {threads} thread(s) = {num_cpu_workers * threads} exceed the '
            f'{cores} CPU core(s) this server may use: the workers slow each other down and each holds a copy '
            f'of the model. Use -num_worker {max(1, cores // threads)} or fewer')


def batch_token_budget(device_id: int, max_batch_tokens: Optional[int], max_batch_size: int,
                       max_seq_len: Optional[int]) -> int:
    """The most padded tokens (inputs x longest input) one model call of a worker may hold.

    Args:
        device_id: the worker's GPU, -1 for the CPU.
        max_batch_tokens: the flag; None (its default) means by device.
        max_batch_size: most inputs per batch.
        max_seq_len: tokens per input; None = as long as the input (up to LONGEST_INPUT).

    Returns:
        the flag if set; else on a GPU ``max_batch_size x max_seq_len`` (the original's batch, so a
        GPU gets whole batches), on a CPU CPU_BATCH_TOKENS (the measured optimum).
    """
    if max_batch_tokens is not None:
        return int(max_batch_tokens)
    if device_id >= 0:
        return int(max_batch_size) * int(max_seq_len or LONGEST_INPUT)
    return CPU_BATCH_TOKENS


# A block split in two runs a one-sentence request in ~5 ms instead of ~7.5 on two cores
# (docs/benchmark-history.md). More parts than two were never measured, so a worker with more cores splits
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
