"""A trivial pipeline role for the Supervisor tests. ChildProcess runs it as
``from child_role import main; main()`` with this folder on PYTHONPATH. It keeps the launcher's
contract (the spec on stdin, one byte on ``ready_fd`` when ready, SIGTERM stops it) with the standard
library alone, so it starts in milliseconds where the package's imports take most of a second.

Spec: ``exit_code`` n: exit at once with n. Otherwise signal ready and run until SIGTERM (exit 0), or
with ``ignore_sigterm`` until SIGKILL. Whatever happens, it leaves after LIFETIME_SECONDS.
"""
import json
import os
import signal
import sys
import time

__all__ = ['main']

LIFETIME_SECONDS = 60.0


def main() -> None:
    spec = json.loads(sys.stdin.read() or '{}')
    if spec.get('exit_code') is not None:
        sys.exit(spec['exit_code'])
    signal.signal(signal.SIGTERM, signal.SIG_IGN if spec.get('ignore_sigterm') else lambda *_: sys.exit(0))
    os.write(spec['ready_fd'], b'1')
    deadline = time.monotonic() + LIFETIME_SECONDS
    while time.monotonic() < deadline:
        time.sleep(0.05)
    sys.exit(1)
