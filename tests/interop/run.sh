#!/usr/bin/env bash
# Interop proof against the real tools (issue: GGUF interop). Builds, once, a virtualenv with
# llama-cpp-python (compiles llama.cpp from source: 8 minutes on 2 cores) and gguf-py, caches it,
# and runs check.py. Usage: run.sh BIN_DIR WORK_DIR
#
# Environment: BITNET_INTEROP_VENV overrides the cache location
# (default ~/.cache/bitnet-tools/interop-venv). Exit 77 means "environment could not be built:
# skipped" and is reported loudly by tests/interop.rs; any other non-zero exit is a failure.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${BITNET_INTEROP_VENV:-$HOME/.cache/bitnet-tools/interop-venv}"
stamp="$venv/.requirements"
ready() { [ -x "$venv/bin/python" ] && cmp -s "$here/requirements.txt" "$stamp" \
    && "$venv/bin/python" -c "import llama_cpp, gguf, numpy" 2>/dev/null; }
if ! ready; then
    echo "interop: building the Python environment in $venv (llama.cpp compiles from source; this takes a while once)" >&2
    if [ -e "$venv" ] && [ ! -f "$venv/pyvenv.cfg" ]; then
        echo "interop: $venv exists and is not a virtualenv; not touching it (set BITNET_INTEROP_VENV)" >&2
        exit 77
    fi
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    log="$(mktemp)"
    # Only the library is needed: skip llama.cpp's tools, examples, tests and the multimodal part.
    if ! { python3 -m venv "$venv" \
        && "$venv/bin/pip" install -q --upgrade pip \
        && CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAVA_BUILD=OFF -DLLAMA_CURL=OFF" \
           "$venv/bin/pip" install -q -r "$here/requirements.txt"; } >"$log" 2>&1; then
        echo "interop: could not build the environment; last lines of the log:" >&2
        tail -20 "$log" >&2
        rm -rf "$venv"
        exit 77
    fi
    if ! "$venv/bin/python" -c "import llama_cpp, gguf, numpy" >>"$log" 2>&1; then
        echo "interop: the environment was built but does not import; last lines of the log:" >&2
        tail -20 "$log" >&2
        rm -rf "$venv"
        exit 77
    fi
    cp "$here/requirements.txt" "$stamp"
fi
exec "$venv/bin/python" "$here/check.py" "$@"
