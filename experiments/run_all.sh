#!/usr/bin/env bash
# Regenerates every file under experiments/ from real runs (each file names its command at its top).
# RT-DETRv2-R18 uses the parity fixture's checkpoint (synthetic weights: AP is not meaningful, the
# rows show the pipeline and the speed); YOLOX-Nano has real COCO weights.
#   bash experiments/run_all.sh           everything
#   bash experiments/run_all.sh table     only the pipeline rows and the tables built from them
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
STORE=runs/experiments/results.jsonl  # moved over experiments/results.jsonl once every row is in
CKPT=../shared/fixtures/rtdetrv2_r18vd_parity/checkpoint.pth
what=${1:-all}
[ -f "$CKPT" ] || { echo "run_all: $CKPT not found (../shared beside the project)" >&2; exit 2; }

# 1. Pipeline rows -> results.{jsonl,md,csv}
mkdir -p runs/experiments
: > "$STORE"
common=("results.store=$STORE" "evaluate.sweep_batches=[1,4]" "evaluate.iterations=3")
rtdetr=("model.checkpoint=$CKPT" "data.max_images=16" "quant.calib.max_images=16" "quant.calib.batch_size=4"
        "compare.num_images=2")
for exp in fp32_torch fp32_onnx openvino_fp32 gridsample_decomposed openvino_gridsample_decomposed; do
  $PY -m rtq.run experiment=$exp "model.checkpoint=$CKPT" data.max_images=16 "${common[@]}"
done
for exp in int8_default int8_histogram int8_offsets_float int8_no_backbone int8_extra_outputs int8_fused_plugin; do
  $PY -m rtq.run experiment=$exp "${rtdetr[@]}" "${common[@]}"
done
for exp in openvino_int8_default openvino_int8_direct openvino_int8_extra_outputs; do
  $PY -m rtq.run experiment=$exp "${rtdetr[@]}" "${common[@]}"
done
for exp in yolox_fp32 yolox_fp32_capped yolox_int8_all_max yolox_int8_all_entropy yolox_int8_ops_float \
           yolox_int8_convs_float yolox_int8_max yolox_int8_entropy yolox_int8_auto yolox_int8_end2end \
           yolox_int8_end2end_efficient_nms \
           yolox_openvino_fp32 yolox_openvino_int8_max yolox_openvino_int8_max_unsigned \
           yolox_openvino_int8_all_max_unsigned; do
  $PY -m rtq.run experiment=$exp "results.store=$STORE" "evaluate.sweep_batches=[1,8]" "evaluate.iterations=5"
done
mv "$STORE" experiments/results.jsonl
STORE=experiments/results.jsonl
$PY -m rtq.table --store "$STORE" --out experiments/results.md --csv experiments/results.csv
$PY -m rtq.table --store "$STORE" --analysis experiments/yolox_nano.analysis.md --out experiments/yolox_nano.md
[ "$what" = table ] && exit 0

# 2. The fusion-bug localiser (pipeline stage localize) -> localize_rtdetrv2_r18vd.md
LOC=runs/experiments/localize_fusion_bug
rm -rf "$LOC"
$PY -m rtq.run experiment=localize_fusion_bug "model.checkpoint=$CKPT" "quant.calib.max_images=16" \
    "quant.calib.batch_size=4" "hydra.run.dir=$LOC"
$PY -m rtq.table --store "$STORE" --analysis experiments/localize_rtdetrv2_r18vd.analysis.md \
    --figures "localize=$LOC/localize/report.json" --include "$LOC/localize/report.md" \
    --out experiments/localize_rtdetrv2_r18vd.md

# 3. Export fidelity per recipe -> fidelity_rtdetrv2_r18vd/
$PY -m rtq.debug fidelity --checkpoint "$CKPT" --recipe int8_default --recipe int8_histogram \
    --recipe int8_linear_per_axis --recipe int8_offsets_float --recipe int8_no_backbone --recipe int8_no_decoder \
    --calib-images 4 --num-images 2 --out experiments/fidelity_rtdetrv2_r18vd

# 4. Quantization sensitivity of YOLOX-Nano (its auto recipe goes beside the report, not into conf/)
$PY -m rtq.debug sensitivity --model yolox_nano --calib-images 16 --auto-recipe int8_yolox_auto \
    --max-ap-drop 1.0 --out experiments/sensitivity_yolox_nano

# 5. RT-DETR sensitivity before/after the pipeline's own quantize(). Its inputs are committed beside
#    it: before/*.json by `python -m rtq.debug sensitivity --model rtdetrv2_r18vd --checkpoint CKPT
#    --recipe R --calib-images 4 --no-ap --out DIR` at commit fa43277 (each variant quantized by a
#    bare mtq.quantize), after/*.json by the same command on the current code.
SENS=experiments/sensitivity_rtdetrv2_r18vd
NOTE="Weights are the synthetic parity fixture, so the ranking itself is noise-level; the point is \
which quantization is measured. Before (commit fa43277): each variant quantized by a bare mtq.quantize \
(no recipe glob check, no histogram finishing, no weight snapping) on images resized with PIL's default \
filter. After: each variant quantized by rtq.quant.quantize, the function the pipeline deploys with, on \
the detector's own preprocessing (PIL bilinear, as deployed)."
$PY -m rtq.debug sensitivity-diff \
    --before "$SENS/before/int8_default.json" --after "$SENS/after/int8_default.json" \
    --before "$SENS/before/int8_histogram.json" --after "$SENS/after/int8_histogram.json" \
    --title "RT-DETRv2-R18 sensitivity ranking: bare mtq.quantize (before) vs rtq's quantize() (after)" \
    --note "$NOTE" --out "$SENS.md"

# 6. The CPU benchmark (defaults: conf/bench.yaml) -> bench_rtdetrv2_r18vd.{md,json}
$PY -m rtq.bench

# 7. The debugging loop on OpenVINO (a real INT8 compiler on this CPU)
run_dir() { $PY -c "import json,sys; rows=[json.loads(l) for l in open('$STORE')]; \
print([r for r in rows if r['experiment']==sys.argv[1]][-1]['run_dir'])" "$1"; }
YQ=$(run_dir yolox_openvino_int8_max)/model.int8.onnx
YF=$(run_dir yolox_openvino_fp32)/model.onnx
YALL=$(run_dir yolox_openvino_int8_all_max_unsigned)/model.unsigned_activations.onnx
RQ=$(run_dir openvino_int8_default)/model.int8.onnx
RF=$(run_dir openvino_fp32)/model.onnx
RX=$(run_dir openvino_int8_extra_outputs)
OV=runs/experiments/openvino
rm -rf "$OV"
$PY -m rtq.run experiment=localize_openvino_yolox "hydra.run.dir=$OV/localize_yolox"
$PY -m rtq.run experiment=yolox_openvino_int8_max_layerwise "hydra.run.dir=$OV/layerwise_yolox"
$PY -m rtq.run experiment=localize_openvino_rtdetr "model.checkpoint=$CKPT" "quant.calib.max_images=16" \
    "quant.calib.batch_size=4" "hydra.run.dir=$OV/localize_rtdetr"
$PY -m rtq.debug reduce "$YQ" --out experiments/openvino_yolox_reduce \
    --image ../shared/data/coco_val2017_mini/val2017/000000005001.jpg
$PY -m rtq.compare.noninvasive "$YQ" --reference "$YQ" --fp32 "$YF" --images 2 --max-compiles 60 \
    --out experiments/openvino_noninvasive/yolox_int8_max
$PY -m rtq.compare.noninvasive "$RQ" --reference "$RQ" --fp32 "$RF" --images 2 --max-compiles 60 \
    --out experiments/openvino_noninvasive/rtdetr_int8_default
$PY -m rtq.debug mixed-precision --qdq "$YALL" --fp32 "$YF" --model yolox_nano --budget 1.0 \
    --max-compiles 20 --recipe onnx_int8_openvino_mixed --out experiments/openvino_mixed_yolox || true
$PY -m rtq.table --store "$STORE" --analysis experiments/openvino_yolox.analysis.md \
    --figures "layerwise=$OV/layerwise_yolox/compare/report.json" \
    --figures "localize=$OV/localize_yolox/localize/report.json" \
    --figures "reduce=experiments/openvino_yolox_reduce/report.json" \
    --figures "noninvasive=experiments/openvino_noninvasive/yolox_int8_max/report.json" \
    --figures "mixed=experiments/openvino_mixed_yolox/report.json" \
    --out experiments/openvino_yolox.md
$PY -m rtq.table --store "$STORE" --analysis experiments/openvino_rtdetrv2_r18vd.analysis.md \
    --figures "fusion=$RX/fusion_diff.json" \
    --figures "localize=$OV/localize_rtdetr/localize/report.json" \
    --figures "noninvasive=experiments/openvino_noninvasive/rtdetr_int8_default/report.json" \
    --include "$RX/fusion_diff.md" --include "$RX/layers.md" \
    --out experiments/openvino_rtdetrv2_r18vd.md

# 8. The CPU benchmark of YOLOX-Nano -> bench_yolox_nano.{md,json}
$PY -m rtq.bench --model yolox_nano

# 9. The two End2End forms of YOLOX-Nano INT8 on every bundled image, compared exactly (atol 0):
#    ONNX NonMaxSuppression vs TensorRT's EfficientNMS_TRT run through its reference op -> end2end_nms_forms/
E2E=runs/experiments/end2end_nms_forms
rm -rf "$E2E"
$PY -m rtq.compare --reference "$(run_dir yolox_int8_end2end)/model.end2end_nms.onnx" \
    --target "$(run_dir yolox_int8_end2end_efficient_nms)/model.end2end_nms.onnx" --model yolox_nano \
    --images ../shared/data/coco_val2017_mini/val2017 --num-images 80 --atol 0 --rtol 0 --out "$E2E"
mkdir -p experiments/end2end_nms_forms
cp "$E2E/report.json" experiments/end2end_nms_forms/
{ echo "Generated by step 9 of \`bash experiments/run_all.sh\`: \`python -m rtq.compare --reference <yolox_int8_end2end>/model.end2end_nms.onnx --target <yolox_int8_end2end_efficient_nms>/model.end2end_nms.onnx --model yolox_nano --images coco_val2017_mini/val2017 --num-images 80 --atol 0 --rtol 0\` (reference: the ONNX NonMaxSuppression form; target: TensorRT's EfficientNMS_TRT form through its reference op)."
  echo; cat "$E2E/report.md"; } > experiments/end2end_nms_forms/report.md

# 10. COCO evaluation at scale: peak memory and time at 80 and 2,000 images (synthetic COCO layout)
$PY -m rtq.evaluate.scale --sizes 80 2000 --out experiments/eval_scale.md
$PY -m rtq.evaluate.scale --sizes 80 2000 --out experiments/eval_scale_score_0.05.md evaluate.score_threshold=0.05

# 11. RF-DETR nano (transformers, random weights): torch vs ONNX with the export fixes, INT8 vs FP32,
#     batch sweeps on ORT and OpenVINO -> rfdetr_nano/
$PY -m rtq.models.rfdetr_report --preset nano --input-size 320 --images 8 --calib-images 8 --iterations 10
#     and whether OpenVINO's disagreement with ORT on its INT8 graph is a fusion's -> rfdetr_nano/localize_openvino.md
rm -rf runs/experiments/localize_rfdetr
$PY -m rtq.run experiment=localize_openvino_rfdetr "hydra.run.dir=runs/experiments/localize_rfdetr"
{ echo "Generated by step 11 of \`bash experiments/run_all.sh\`: \`python -m rtq.run experiment=localize_openvino_rfdetr\`."
  echo; cat runs/experiments/localize_rfdetr/localize/report.md; } > experiments/rfdetr_nano/localize_openvino.md
