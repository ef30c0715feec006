#!/usr/bin/env bash
# Installs the Durable Functions clients that tests/tests/real_clients.rs drives, into
# the directory given (default: target/tmp/clients): azure-functions-durable 1.7.0 (pip)
# for `<dir>/bin/python`, and durable-functions 3.x (npm) under `<dir>/node`. Needs
# python3 with pip (a virtual environment when the venv module is there, else a
# --target directory), node and npm. Does nothing when both are installed; concurrent
# runs wait for each other.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
dir="${1:-$root/target/tmp/clients}"
python_pkg="azure-functions-durable==1.7.0"
js_pkg="durable-functions@3"
mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
if [ "$(cat "$dir/python.installed" 2>/dev/null)" != "$python_pkg" ]; then
    rm -rf "$dir/venv" "$dir/pylib" "$dir/bin"
    mkdir -p "$dir/bin"
    # bin/python runs the interpreter that sees the packages (a symlink into the venv
    # would not: Python finds its venv from the path it was started by).
    if python3 -m venv "$dir/venv" 2>/dev/null; then
        "$dir/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$python_pkg"
        printf '#!/bin/sh\nexec "%s" "$@"\n' "$dir/venv/bin/python" >"$dir/bin/python"
    else
        rm -rf "$dir/venv"
        python3 -m pip install --quiet --disable-pip-version-check --target "$dir/pylib" "$python_pkg"
        printf '#!/bin/sh\nPYTHONPATH="%s" exec python3 "$@"\n' "$dir/pylib" >"$dir/bin/python"
    fi
    chmod +x "$dir/bin/python"
    echo "$python_pkg" >"$dir/python.installed"
fi
if [ "$(cat "$dir/node.installed" 2>/dev/null)" != "$js_pkg" ]; then
    rm -rf "$dir/node"
    mkdir -p "$dir/node"
    npm install --prefix "$dir/node" --no-audit --no-fund --loglevel=error "$js_pkg"
    echo "$js_pkg" >"$dir/node.installed"
fi
