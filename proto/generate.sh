#!/usr/bin/env bash
# Regenerate the Python code for tailsift's own wire formats. Needs grpcio-tools (in the
# [test] extra; set PYTHON to the interpreter that has it). tests/test_kafka_transport.py
# fails if the committed code is stale.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${1:-collector/kafka}"
"${PYTHON:-python3}" -m grpc_tools.protoc -Iproto/tailsift/v1 --python_out="$OUT" --pyi_out="$OUT" proto/tailsift/v1/envelope.proto
