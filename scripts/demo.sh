#!/usr/bin/env bash
# The main job (README: `make demo`): a bundled model (default: the digits model), end to end.
#   1. export the Hugging Face checkpoint to ONNX (vision, embedding, language model)
#   2. compile to a spiking .sbin (int8 weights, Tv/Tt = 3/4 TC-LIF timesteps)
#   3. run an image of the test split with a question on the ONNX Runtime target,
#      next to the float model's answer, with the spike statistics.
# MODEL picks the checkpoint (e.g. a Qwen2-VL from scripts/train_scenetext_model.py);
# its data set (digits or scenetext) follows from the
# checkpoint's family unless DATA says otherwise.
set -euo pipefail
OUT=${OUT:-out/demo}
MODEL=${MODEL:-models/digits-llava}
ITEM=${ITEM:-7}   # which test item (image + question)
if [ -z "${DATA:-}" ]; then
  if grep -q '"model_type": "qwen2_vl"' "$MODEL/config.json" 2>/dev/null; then DATA=scenetext; else DATA=digits; fi
fi
# The scene-text model's 3/4 reading is within a point of float only with QuaRot's
# rotation (docs/scenetext-model.md); the digits model needs none.
case "$DATA" in
  digits) MAXNEW=4; ROTATE="" ;;
  scenetext) MAXNEW=6; ROTATE="--rotate" ;;
  *) echo "demo.sh: DATA must be digits or scenetext, not '$DATA'" >&2; exit 2 ;;
esac
mkdir -p "$OUT"

echo "== 1. export $MODEL"
spikec export "$MODEL" -o "$OUT/export"

echo
echo "== 2. compile to a spiking model (Tv/Tt = 3/4${ROTATE:+, with $ROTATE})"
spikec compile "$OUT/export" -o "$OUT/model.sbin" --tv 3 --tt 4 $ROTATE --dump-ir "$OUT/ir" > "$OUT/compile.txt" 2>&1
echo "compile report: $OUT/compile.txt, IR after every pass: $OUT/ir/"
spikec inspect "$OUT/model.sbin" > "$OUT/inspect.txt"
sed -n '1,13p' "$OUT/inspect.txt"

echo
echo "== 3. a test image and a question"
QUESTION=$(python - "$OUT" "$ITEM" "$DATA" <<'PY'
import sys
out, k, data = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if data == "scenetext":
    from spikec.datasets.scenetext import make_item
    item = make_item("test", k)
    item.image().save(f"{out}/image.png")
    what = f"scenetext test #{k}, {item.pixels.shape[1]}x{item.pixels.shape[0]} px, type {item.qtype}"
else:
    from spikec.datasets.digits import make_items, render_image, load_digit_images
    item = make_items("test")[k]
    render_image(load_digit_images()[0][item.index]).save(f"{out}/image.png")
    what = f"digits #{item.index}"
print(item.prompt)
print(f"image {out}/image.png ({what}), question: {item.prompt!r}, expected answer: {item.answer!r}", file=sys.stderr)
PY
)
FLOAT=$(python - "$MODEL" "$OUT/image.png" "$QUESTION" "$MAXNEW" <<'PY'
import sys
from spikec.evaluate import predictor_for
from spikec.runtime.model import load_image
predict, _, _ = predictor_for(sys.argv[1], max_new_tokens=int(sys.argv[4]))
print(predict(load_image(sys.argv[2]), sys.argv[3]).strip())
PY
)
echo "float model (transformers) answers:  $FLOAT"
echo -n "spiking model (ORT target) answers:  "
spikec run "$OUT/model.sbin" --target ort --image "$OUT/image.png" --prompt "$QUESTION" --max-new-tokens "$MAXNEW" --stats
