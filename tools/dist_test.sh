#!/usr/bin/env bash
# Evaluate a trained checkpoint on GPUS processes; writes WORK_DIR/test_results.json (test_results_tta.json with
# --tta, or --metrics-json FILE).
# dist_test.sh CONFIG CHECKPOINT GPUS [--work-dir DIR] [--metrics-json FILE] [--out PATH] [--show-dir DIR] [--tta]
#     [--cfg-options k=v ...]   (every option goes to tools/test.py; --out, --show-dir, --tta as in mmseg / mmdet)
set -euo pipefail
if [[ $# -lt 3 ]]; then
    echo "usage: $0 CONFIG CHECKPOINT GPUS [--work-dir DIR] [--metrics-json FILE] [--out PATH] [--show-dir DIR]" \
        "[--tta] [--cfg-options k=v ...]" >&2
    exit 2
fi
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
shift 3
exec "$(dirname "$0")/launch.sh" test.py "$GPUS" "$CONFIG" "$CHECKPOINT" "$@"
