#!/bin/sh
# Runs the client's own tests (tests/client) on every CPython the client declares, each in a small
# venv holding only pyzmq, numpy, pytest, pytest-timeout and the client wheel: no TensorFlow, no
# server package. Called by `make test-client-pythons` and, beside pytest, by `make test`.
#
#   tests/client_pythons.sh WHEEL VENVS_DIR VERSION...
#
# An interpreter comes from pyenv (`pyenv root`, the newest `pyenv versions --bare` of that minor
# version) or else from `pythonX.Y` on PATH; a version with neither is skipped with a message.
# The versions run at the same time (the tests mostly wait on sockets), each logging to
# VENVS_DIR/VERSION.log; a failed run's log is printed whole. Venvs are made with uv ($UV, else uv on
# PATH) when there is one, which takes a second where `python -m venv` and pip take ten.
# Exit status 1 if a run failed; a table of the results at the end.
set -u

wheel=$1
venvs=$2
shift 2
[ -f "$wheel" ] || { echo "no client wheel at $wheel (make install builds it)" >&2; exit 2; }
mkdir -p "$venvs"

pyenv_root=$(pyenv root 2>/dev/null || true)
uv=${UV:-}
[ -n "$uv" ] && [ -x "$uv" ] || uv=$(command -v uv || true)
packages='pyzmq numpy pytest pytest-timeout'

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

# make_venv PYTHON VENV: the venv is made once, with the packages the tests need.
make_venv() {
    if [ -n "$uv" ]; then
        "$uv" venv -q --python "$1" "$2" && "$uv" pip install -q --python "$2/bin/python" $packages
    else
        "$1" -m venv "$2" && "$2/bin/python" -m pip install -q $packages
    fi
}

# The wheel goes in again every time, since its name does not change when the sources do.
install_wheel() {
    if [ -n "$uv" ]; then
        "$uv" pip install -q --python "$1/bin/python" --no-deps --reinstall "$wheel"
    else
        "$1/bin/python" -m pip install -q --no-deps --force-reinstall "$wheel"
    fi
}

# run_one VERSION PYTHON: writes VENVS_DIR/VERSION.log and VENVS_DIR/VERSION.result.
run_one() {
    venv="$venvs/$1"
    {
        echo "== client tests on $($2 --version 2>&1) ($2)"
        if [ ! -x "$venv/bin/python" ] && ! make_venv "$2" "$venv"; then
            rm -rf "$venv"
            echo 'FAILED (could not build the venv)' >"$venvs/$1.result"
            return
        fi
        if install_wheel "$venv" && "$venv/bin/python" -m pytest tests/client -q -p no:cacheprovider; then
            echo passed >"$venvs/$1.result"
        else
            echo FAILED >"$venvs/$1.result"
        fi
    } >"$venvs/$1.log" 2>&1
}

ran=''
skipped=''
for version in "$@"; do
    python=$(find_python "$version")
    if [ -z "$python" ]; then
        echo "SKIPPED: no Python $version (neither pyenv nor python$version on PATH); install it to test the client there"
        skipped="$skipped
  Python $version: skipped (not installed)"
        continue
    fi
    rm -f "$venvs/$version.result"
    run_one "$version" "$python" &
    ran="$ran $version"
done
wait

results=''
failed=0
for version in $ran; do
    result=$(cat "$venvs/$version.result" 2>/dev/null || echo 'FAILED (no result)')
    case $result in
        passed) tail -n 1 "$venvs/$version.log" | sed "s/^/== Python $version: /" ;;
        *) failed=1; cat "$venvs/$version.log" ;;
    esac
    name=$("$venvs/$version/bin/python" --version 2>/dev/null || echo "Python $version")
    results="$results
  $name: $result"
done

echo "== the client on each Python:$results$skipped"
exit $failed
