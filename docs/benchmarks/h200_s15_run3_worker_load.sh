#!/usr/bin/env bash
# Session 15 run 3: does the batch workers' CPU load alone slow the GPU step? Synthetic batches (no
# workers) timed alone, then while benchmarks/input_pipeline.py keeps 8 worker processes making
# arbitrary-style batches flat out in another process, then alone again.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
F="grep --line-buffered -v ^WARNING\|^I0000\|^E0000\|DeprecationWarning\|os.fork\|self.pid"
L="loop=training trainer.space_to_depth_channels=32 trainer.steps_per_execution=8 trainer.shifted_sum_depthwise=strided trainer.relu_gradient_from_output=true"
bench() {
  timeout 200 python benchmarks/train_throughput.py --models magenta_lite --precisions mixed_bfloat16 --input-dtypes uint8 \
    --steps 96 --warmup 32 --batch-sizes 64 --no-pipeline-rate --variants "$L style=all" --out $OUT/h200_lite_b64_s15_run3_$1.json 2>&1 | $F | tee -a $OUT/log.txt
}
echo "== synthetic, no load" | tee -a $OUT/log.txt; bench 1_alone
echo "== synthetic, 8 worker processes making style=all batches in another process" | tee -a $OUT/log.txt
timeout 170 python benchmarks/input_pipeline.py --workers 8 --kinds processes --dtypes uint8 --style all --seconds 150 \
  --out $OUT/h200_input_pipeline_s15_run3_load.json 2>&1 | $F | tee -a $OUT/log.txt &
LOAD=$!; sleep 15; uptime | tee -a $OUT/log.txt
bench 2_loaded; uptime | tee -a $OUT/log.txt
kill $LOAD 2>/dev/null; pkill -f input_pipeline.py; sleep 3
echo "== synthetic, no load again" | tee -a $OUT/log.txt; bench 3_alone
