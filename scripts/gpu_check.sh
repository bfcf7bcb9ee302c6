#!/usr/bin/env bash
# GPU check for the ONNX generators and landmarks (issue #4): run on a machine with an
# NVIDIA GPU, with onnxruntime-gpu installed in the project's virtualenv. Writes its figures
# as JSON under benchmarks/results/ (or $OUT when set) and prints them.
#
#   bash scripts/gpu_check.sh [CLIP AUDIO]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"

dub=()
if [ $# -ge 2 ]; then dub=(--dub "$1" "$2"); fi
for provider in TensorrtExecutionProvider CUDAExecutionProvider; do
  $PY benchmarks/generator.py --providers "$provider" --batches 1 16 32 64 128 --precisions fp32 fp16 \
    --json "$OUT/generator_${provider}.json" "${dub[@]}" || echo "$provider: failed"
done

# The batched face-landmark path (--landmarker onnx): MediaPipe's face models converted once,
# then frames per second against MediaPipe's own CPU path on the shared clips (or $CLIPS).
$PY scripts/convert_mediapipe.py || echo "convert_mediapipe: failed"
$PY benchmarks/landmarks.py ${CLIPS:-} --providers CUDAExecutionProvider CPUExecutionProvider \
  --batches 1 8 32 64 --copies 6 --json "$OUT/landmarks.json" || echo "landmarks: failed"
