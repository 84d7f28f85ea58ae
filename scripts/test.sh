#!/usr/bin/env bash
# Sets up .venv (if needed), lints with ruff, and runs the default test suite (everything not marked slow).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` for the heavy tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m ruff check .  # lint + import order ([tool.ruff] in pyproject.toml); `ruff check --fix .` sorts imports
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(-m "not slow")
set +e
python -m pytest -q "${args[@]}"
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "pytest collected no test for: ${args[*]}"; exit 0; fi
exit $rc
