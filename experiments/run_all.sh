#!/usr/bin/env bash
# Produces experiments/results.{jsonl,md,csv}: every row of the committed table, from real runs.
# RT-DETRv2-R18 uses the parity fixture's checkpoint (synthetic weights: AP is not meaningful, the
# table shows the pipeline and the speed); YOLOX-Nano has real COCO weights.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
STORE=experiments/results.jsonl
CKPT=../shared/fixtures/rtdetrv2_r18vd_parity/checkpoint.pth
: > "$STORE"
common=("results.store=$STORE" "evaluate.sweep_batches=[1,4]" "evaluate.iterations=3")
rtdetr=("model.checkpoint=$CKPT" "data.max_images=16" "quant.calib.max_images=16" "quant.calib.batch_size=4"
        "compare.num_images=2")
for exp in fp32_torch fp32_onnx; do
  $PY -m rtq.run experiment=$exp "model.checkpoint=$CKPT" data.max_images=16 "${common[@]}"
done
for exp in int8_default int8_histogram int8_offsets_float int8_no_backbone int8_extra_outputs int8_fused_plugin; do
  $PY -m rtq.run experiment=$exp "${rtdetr[@]}" "${common[@]}"
done
for exp in yolox_fp32 yolox_int8_max yolox_int8_entropy yolox_int8_auto yolox_int8_end2end; do
  $PY -m rtq.run experiment=$exp "results.store=$STORE" "evaluate.sweep_batches=[1,8]" "evaluate.iterations=5"
done
$PY -m rtq.table --store "$STORE" --out experiments/results.md --csv experiments/results.csv
