#!/bin/sh
# Runs the client's own tests (tests/client) on every CPython the client declares, each in a small
# venv holding only pyzmq, numpy, pytest, pytest-timeout and the client wheel: no TensorFlow, no
# server package. Called by `make test-client-pythons`.
#
#   tests/client_pythons.sh WHEEL VENVS_DIR VERSION...
#
# An interpreter comes from pyenv (`pyenv root`, the newest `pyenv versions --bare` of that minor
# version) or else from `pythonX.Y` on PATH; a version with neither is skipped with a message.
# Exit status 1 if a run failed; a table of the results at the end.
set -u

wheel=$1
venvs=$2
shift 2
[ -f "$wheel" ] || { echo "no client wheel at $wheel (make install builds it)" >&2; exit 2; }

pyenv_root=$(pyenv root 2>/dev/null || true)
results=''
failed=0

find_python() {
    if [ -n "$pyenv_root" ]; then
        full=$(pyenv versions --bare 2>/dev/null | grep -E "^$1\.[0-9]+$" | sort -t. -k3 -n | tail -n 1)
        if [ -n "$full" ] && [ -x "$pyenv_root/versions/$full/bin/python" ]; then
            echo "$pyenv_root/versions/$full/bin/python"
            return
        fi
    fi
    command -v "python$1" || true
}

for version in "$@"; do
    python=$(find_python "$version")
    if [ -z "$python" ]; then
        echo "SKIPPED: no Python $version (neither pyenv nor python$version on PATH); install it to test the client there"
        results="$results
  Python $version: skipped (not installed)"
        continue
    fi
    venv="$venvs/$version"
    echo "== client tests on $($python --version 2>&1) ($python)"
    # The venv is made once; the wheel goes in again every time, since its name does not change
    # when the sources do.
    if [ ! -x "$venv/bin/python" ]; then
        "$python" -m venv "$venv" && "$venv/bin/python" -m pip install -q pyzmq numpy pytest pytest-timeout \
            || { rm -rf "$venv"; failed=1; results="$results
  Python $version: FAILED (could not build the venv)"; continue; }
    fi
    if "$venv/bin/python" -m pip install -q --no-deps --force-reinstall "$wheel" \
            && "$venv/bin/python" -m pytest tests/client -q -p no:cacheprovider; then
        results="$results
  $($venv/bin/python --version 2>&1): passed"
    else
        failed=1
        results="$results
  $($venv/bin/python --version 2>&1): FAILED"
    fi
done

echo "== the client on each Python:$results"
exit $failed
