# Sourced by scripts/dev and scripts/test: from a machine with only Python >= 3.11 to a
# synced .venv. Installs uv with pip when it is missing, then `uv sync --frozen`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

find_python() {
    for candidate in python3.13 python3.12 python3.11 python3 python; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "pgfirst needs Python >= 3.11 on PATH" >&2
    return 1
}

ensure_uv() {
    if command -v uv >/dev/null 2>&1; then
        UV=(uv)
        return 0
    fi
    local python
    python="$(find_python)"
    if ! "$python" -m uv --version >/dev/null 2>&1; then
        echo "==> installing uv with pip" >&2
        "$python" -m pip install --quiet --user uv 2>/dev/null ||
            "$python" -m pip install --quiet uv 2>/dev/null ||
            "$python" -m pip install --quiet --user --break-system-packages uv
    fi
    UV=("$python" -m uv)
}

sync_env() {
    ensure_uv
    # Never download an interpreter: use the Python already on the machine.
    export UV_PYTHON_DOWNLOADS="${UV_PYTHON_DOWNLOADS:-never}"
    echo "==> uv sync --frozen" >&2
    "${UV[@]}" sync --frozen --quiet
    export PATH="$ROOT/.venv/bin:$PATH"
}

# ensure_system_packages COMMAND:PACKAGE...: apt-get install the packages whose command is
# not on PATH (or in /usr/sbin), in one call, when running as root on Debian.
ensure_system_packages() {
    local missing=() pair
    for pair in "$@"; do
        if ! command -v "${pair%%:*}" >/dev/null 2>&1 && [[ ! -x "/usr/sbin/${pair%%:*}" ]]; then
            missing+=("${pair#*:}")
        fi
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "==> installing ${missing[*]} (apt-get)" >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    else
        echo "!! not installed: ${missing[*]} (the tests that need them will fail)" >&2
    fi
}
