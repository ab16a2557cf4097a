#!/usr/bin/env bash
# Installs the tools the demo and the tests need when they are missing:
# cargo-lambda (the local Lambda runtime emulator), chDB (the current ClickHouse
# engine in process), cfn-lint (checks template.yaml) and openapi-spec-validator
# (checks docs/openapi.json) from PyPI, plus rustfmt and clippy. Source it: it may extend PATH.
set -euo pipefail

_py=${EXPOSURES_PYTHON:-python3}
# pip puts console scripts (cargo-lambda) in the interpreter's scripts dir.
_scripts=$("$_py" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
case ":$PATH:" in *":$_scripts:"*) ;; *) export PATH="$PATH:$_scripts" ;; esac

_pip=()
cargo lambda --version >/dev/null 2>&1 || _pip+=(cargo-lambda)
"$_py" -c 'import chdb' >/dev/null 2>&1 || _pip+=(chdb-core)
command -v cfn-lint >/dev/null 2>&1 || _pip+=(cfn-lint)
command -v openapi-spec-validator >/dev/null 2>&1 || _pip+=(openapi-spec-validator)
if [ ${#_pip[@]} -gt 0 ]; then
    echo "tools.sh: pip install ${_pip[*]}" >&2
    "$_py" -m pip install --quiet --disable-pip-version-check "${_pip[@]}" </dev/null
fi
if command -v rustup >/dev/null; then
    for _c in rustfmt clippy; do
        rustup component list --installed 2>/dev/null | grep -q "^$_c" || rustup component add "$_c"
    done
fi
cargo lambda --version >/dev/null || { echo "tools.sh: cargo lambda still missing" >&2; exit 1; }
