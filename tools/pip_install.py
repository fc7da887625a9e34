"""`pip install` for `make install`, done by uv when it can: `python tools/pip_install.py ARGS...`

uv installs the whole test environment (TensorFlow, torch, transformers and ~120 more) in about
10 s on the 2-core development machine, where pip takes 1 to 2.5 min. uv does not read pip's
configuration, and a machine may need it (here: wheels in /opt/wheels, local indexes, a constraints
file capping torch), so this hands pip's settings to uv as flags:

    index-url, extra-index-url, find-links, constraint  ->  the uv flags of the same names
    cert                                                  ->  SSL_CERT_FILE
    default-timeout                                       ->  UV_HTTP_TIMEOUT

ARGS are pip's, restricted to what both tools spell alike (package specs, -r, --upgrade,
--no-deps, --target, -q). If uv is not installed in this Python's environment or fails, the same
install runs with pip, so a machine where uv cannot work still installs, only more slowly.

Bytecode is not compiled at install time (uv's default; pip's --compile took most of its time):
Python compiles each module when it is first imported and keeps the result, unless
PYTHONDONTWRITEBYTECODE is set, so `make install` then imports the server's modules once with it
unset (see the Makefile).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

# pip setting -> uv flag; each value may hold several entries separated by spaces.
LIST_FLAGS = {
    'index-url': '--index-url',
    'extra-index-url': '--extra-index-url',
    'find-links': '--find-links',
    'constraint': '--constraint',
}


def pip_settings(python: str) -> dict[str, list[str]]:
    """Every value pip sees for each key, from its config files and PIP_* variables alike."""
    out = subprocess.run([python, '-m', 'pip', 'config', 'list'], capture_output=True, text=True).stdout
    settings: dict[str, list[str]] = {}
    for line in out.splitlines():
        name, sep, value = line.partition('=')
        if not sep:
            continue
        key = name.rpartition('.')[2]
        for item in value.strip().strip('\'"').split():
            if item not in settings.setdefault(key, []):
                settings[key].append(item)
    return settings


def uv_command(uv: str, python: str, args: list[str]) -> tuple[list[str], dict[str, str]]:
    settings = pip_settings(python)
    command = [uv, 'pip', 'install', '--python', python,
               # pip takes the best version from every index; uv's default takes the first index that
               # has the package at all, which would miss torch's +cpu build in find-links.
               '--index-strategy', 'unsafe-best-match']
    for key, flag in LIST_FLAGS.items():
        values = settings.get(key, [])
        if key == 'index-url':
            values = values[-1:]
        for value in values:
            command += [flag, value]
    env = dict(os.environ)
    if settings.get('cert'):
        env.setdefault('SSL_CERT_FILE', settings['cert'][-1])
    if settings.get('default-timeout'):
        env.setdefault('UV_HTTP_TIMEOUT', settings['default-timeout'][-1])
    return command + args, env


def main(args: list[str]) -> int:
    python = sys.executable
    uv = Path(python).with_name('uv')
    uv_path = str(uv) if uv.exists() else shutil.which('uv')
    if uv_path:
        command, env = uv_command(uv_path, python, args)
        if subprocess.run(command, env=env).returncode == 0:
            return 0
        print('pip_install.py: uv failed (above); installing with pip instead', file=sys.stderr)
    return subprocess.run([python, '-m', 'pip', 'install', *args]).returncode


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
