#!/usr/bin/env bash
# Install emovox with its dev dependencies (CPU PyTorch) and run the whole test suite.
# This is the README's test command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q "torch==2.13.0" -e ".[dev]"
python -m pytest -q "$@"
