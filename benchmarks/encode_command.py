"""(i) of ``make bench``: ``bert-serving-encode``, the client's console command, over the workload
written to a text file, against one ``BertClient.encode`` of the same lines.

The two alternate, ``repeat`` times each, on one running server, and the best of each counts: the
machine's speed drifts over minutes, so the ratio compares runs seconds apart; the workers' CPU
time of each run is kept too, which a busy machine disturbs less than the wall clock. The command runs as a
user runs it: a fresh process (its start-up and its first pass over the file included in the time),
writing its ``.npy`` into a temporary directory. Its vectors must equal the one call's within
``VECTOR_ATOL``: the same server computes both, only the batches around each sentence differ.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import numpy as np

from .timing import timed

__all__ = ['VECTOR_ATOL', 'cpu_seconds', 'encode_command', 'measure_encode_command', 'vector_difference']

# Largest |difference| of one float32 component between the command's vectors and the one call's: a
# sentence may meet another batch shape (and the narrow tower instead of the wide one) in each.
VECTOR_ATOL = 1e-5


def encode_command() -> List[str]:
    """The argv that starts ``bert-serving-encode``: the console script installed beside this
    Python, else the module it runs (the same ``main()``), for a tree that is not installed."""
    script = Path(sys.executable).parent / 'bert-serving-encode'
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, '-m', 'bert_serving.client.encode_cli']


def _environment() -> Dict[str, str]:
    """This process's environment with PYTHONPATH made absolute, so the command imports the same
    client wherever it runs."""
    env = dict(os.environ)
    if env.get('PYTHONPATH'):
        env['PYTHONPATH'] = os.pathsep.join(os.path.abspath(p) for p in env['PYTHONPATH'].split(os.pathsep) if p)
    return env


def cpu_seconds(pids: Sequence[int]) -> float:
    """User plus system CPU seconds the processes ``pids`` have used so far (from /proc; a process
    that is gone counts 0)."""
    total = 0.0
    for pid in pids:
        try:
            with open(f'/proc/{pid}/stat', encoding='ascii') as f:
                fields = f.read().rsplit(')', 1)[1].split()  # after the command name, which may hold spaces
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')  # utime, stime
    return total


def vector_difference(ours: np.ndarray, reference: np.ndarray) -> float:
    """Largest |difference| between two float arrays of one shape ([N, D]); inf when the shapes differ."""
    if ours.shape != reference.shape:
        return float('inf')
    return float(np.max(np.abs(ours.astype(np.float64) - reference.astype(np.float64))))


def measure_encode_command(port: int, port_out: int, lines: List[str], repeat: int, timeout_ms: int,
                           say: Callable[[str], None], worker_pids: Sequence[int] = ()) -> Dict:
    """Alternates one ``BertClient.encode(lines)`` and one ``bert-serving-encode`` run over ``lines``.

    Args:
        port, port_out: The running server's.
        lines: The sentences, none blank and none with a line break (the command skips blank lines).
        repeat: Runs of each; the best of each counts.
        timeout_ms: The client's and the command's ``-timeout``.
        say: Where progress goes.
        worker_pids: The server's worker processes, whose CPU time each run takes is measured.

    Returns:
        ``encode_cli_sentences_per_s`` and ``encode_cli_b_sentences_per_s`` (the one call's, measured
        alongside), their ratio ``ratio_encode_cli_over_b``, ``encode_cli_max_abs_diff`` of the
        command's float32 [N, D] output against the one call's vectors, ``encode_cli_command``, and
        the workers' least CPU seconds for one run of each, ``encode_cli_worker_cpu_s`` and
        ``encode_cli_b_worker_cpu_s`` (0 without ``worker_pids``).

    Raises:
        RuntimeError: The command failed (its stderr is in the message) or wrote a wrong shape.
    """
    from bert_serving.client import BertClient

    command = encode_command()
    call_seconds, command_seconds, call_cpu, command_cpu = [], [], [], []
    with tempfile.TemporaryDirectory(prefix='bench-encode-') as tmp, \
            BertClient(port=port, port_out=port_out, check_length=False, timeout=timeout_ms) as bc:
        corpus, output = Path(tmp) / 'corpus.txt', Path(tmp) / 'vectors.npy'
        corpus.write_text(''.join(line + '\n' for line in lines), encoding='utf-8')
        argv = command + [str(corpus), str(output), '-port', str(port), '-port_out', str(port_out),
                          '-timeout', str(timeout_ms), '--overwrite', '--no-progress']
        for i in range(repeat):
            say(f'(i) one encode of {len(lines)} sentences, then bert-serving-encode over them, run {i + 1}/{repeat}')
            cpu = cpu_seconds(worker_pids)
            seconds, vectors = timed(lambda: bc.encode(lines))
            call_seconds.append(seconds)
            call_cpu.append(cpu_seconds(worker_pids) - cpu)
            cpu = cpu_seconds(worker_pids)
            seconds, done = timed(lambda: subprocess.run(argv, env=_environment(), stdout=subprocess.DEVNULL,
                                                         stderr=subprocess.PIPE, text=True, check=False))
            if done.returncode != 0:
                raise RuntimeError(f'(i) {" ".join(argv)} exited with {done.returncode}: {done.stderr.strip()}')
            command_seconds.append(seconds)
            command_cpu.append(cpu_seconds(worker_pids) - cpu)
        written = np.load(output)
    diff = vector_difference(written, np.asarray(vectors))
    if not np.isfinite(diff):
        raise RuntimeError(f'(i) bert-serving-encode wrote {list(written.shape)}, the one call returned '
                           f'{list(np.shape(vectors))}')
    return {'encode_cli_sentences_per_s': len(lines) / min(command_seconds),
            'encode_cli_b_sentences_per_s': len(lines) / min(call_seconds),
            'ratio_encode_cli_over_b': min(call_seconds) / min(command_seconds),
            'encode_cli_max_abs_diff': diff,
            'encode_cli_worker_cpu_s': min(command_cpu), 'encode_cli_b_worker_cpu_s': min(call_cpu),
            'encode_cli_command': 'bert-serving-encode' if len(command) == 1 else 'python -m ' + command[-1]}
