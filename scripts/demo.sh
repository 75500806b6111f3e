#!/usr/bin/env bash
# The main job (README: `make demo`): the bundled digits model, end to end.
#   1. export the Hugging Face checkpoint to ONNX (vision, embedding, language model)
#   2. compile to a spiking .sbin (int8 weights, Tv/Tt = 3/4 TC-LIF timesteps)
#   3. run an image of the test split with a question on the ONNX Runtime target,
#      next to the float model's answer, with the spike statistics.
set -euo pipefail
OUT=${OUT:-out/demo}
MODEL=${MODEL:-models/digits-llava}
ITEM=${ITEM:-7}   # which test item (image + question)
mkdir -p "$OUT"

echo "== 1. export $MODEL"
spikec export "$MODEL" -o "$OUT/export"

echo
echo "== 2. compile to a spiking model (Tv/Tt = 3/4)"
spikec compile "$OUT/export" -o "$OUT/model.sbin" --tv 3 --tt 4 --dump-ir "$OUT/ir" > "$OUT/compile.txt" 2>&1
echo "compile report: $OUT/compile.txt, IR after every pass: $OUT/ir/"
spikec inspect "$OUT/model.sbin" > "$OUT/inspect.txt"
sed -n '1,13p' "$OUT/inspect.txt"

echo
echo "== 3. a test image and a question"
QUESTION=$(python - "$OUT" "$ITEM" <<'PY'
import sys
from spikec.datasets.digits import make_items, render_image, load_digit_images
out, k = sys.argv[1], int(sys.argv[2])
item = make_items("test")[k]
render_image(load_digit_images()[0][item.index]).save(f"{out}/image.png")
print(item.prompt)
print(f"image {out}/image.png (digits #{item.index}), question: {item.prompt!r}, expected answer: {item.answer!r}", file=sys.stderr)
PY
)
FLOAT=$(python - "$MODEL" "$OUT/image.png" "$QUESTION" <<'PY'
import sys
from spikec.evaluate import predictor_for
from spikec.runtime.model import load_image
predict, _, _ = predictor_for(sys.argv[1], max_new_tokens=4)
print(predict(load_image(sys.argv[2]), sys.argv[3]).strip())
PY
)
echo "float model (transformers) answers:  $FLOAT"
echo -n "spiking model (ORT target) answers:  "
spikec run "$OUT/model.sbin" --target ort --image "$OUT/image.png" --prompt "$QUESTION" --max-new-tokens 4 --stats
