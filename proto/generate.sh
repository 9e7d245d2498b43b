#!/usr/bin/env bash
# Regenerate the Python code for tailsift's own wire formats. Needs grpcio-tools (in the
# [test] extra); tests/test_envelope.py fails if the committed code is stale.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${1:-collector/kafka}"
python -m grpc_tools.protoc -Iproto/tailsift/v1 --python_out="$OUT" --pyi_out="$OUT" proto/tailsift/v1/envelope.proto
