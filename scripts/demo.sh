#!/usr/bin/env bash
# The main job (README: `make demo`): the deepest end-to-end path that works today.
# Builds a tiny real ONNX model with torch's exporter, compiles it through the
# pass pipeline with per-pass IR dumps, and inspects the result.
set -euo pipefail
OUT=${OUT:-out/demo}
mkdir -p "$OUT"
echo "== 1. a tiny ONNX model (pre-norm MLP block, exported by torch)"
python -c "from spikec.examples import tiny_mlp_block; tiny_mlp_block('$OUT/tiny_mlp.onnx')"
spikec inspect "$OUT/tiny_mlp.onnx"
echo
echo "== 2. compile through the pass pipeline, IR dumped after every pass"
spikec compile "$OUT/tiny_mlp.onnx" -o "$OUT/tiny_mlp.compiled.onnx" --dump-ir "$OUT/ir"
echo
echo "== 3. the compiled model"
spikec inspect "$OUT/tiny_mlp.compiled.onnx"
