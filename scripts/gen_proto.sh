#!/usr/bin/env bash
# Regenerate the Python code of the kubelet PodResources v1 API with grpcio-tools.
#
# Usage: scripts/gen_proto.sh [OUT_DIR]
#   OUT_DIR defaults to exporter/attribution/proto (the committed code). The test
#   tests/exporter/attribution/test_proto_current.py writes to a temporary folder
#   and compares byte for byte, so run this after editing api.proto and commit
#   the result. Set PYTHON to choose the interpreter that has grpcio-tools.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
proto_dir="$root/exporter/attribution/proto"
out="${1:-$proto_dir}"
python="${PYTHON:-python3}"

mkdir -p "$out"
"$python" -m grpc_tools.protoc \
    --proto_path="$proto_dir" \
    --python_out="$out" \
    --pyi_out="$out" \
    --grpc_python_out="$out" \
    "$proto_dir/api.proto"

# grpcio-tools writes a top-level `import api_pb2`; inside our package it must be
# relative, or the import only works with the proto folder on sys.path.
grpc_file="$out/api_pb2_grpc.py"
if ! grep -q '^import api_pb2 as api__pb2$' "$grpc_file"; then
    echo "gen_proto.sh: expected 'import api_pb2 as api__pb2' in $grpc_file;" \
        "grpcio-tools changed its output, update this script" >&2
    exit 1
fi
"$python" - "$grpc_file" <<'PY'
import pathlib
import sys

path = pathlib.Path(sys.argv[1])
text = path.read_text()
path.write_text(
    text.replace("\nimport api_pb2 as api__pb2\n", "\nfrom . import api_pb2 as api__pb2\n", 1)
)
PY
