#!/bin/bash
# Session 16, run 3: (a) live style=all training with glibc malloc keeping batch-sized blocks for reuse
# (no fresh pages, no munmap per batch) against the default, one process each, interleaved;
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax PYTHONUNBUFFERED=1
F() { grep -v -e WARNING -e I0000 -e E0000 -e DeprecationWarning -e os.fork -e self.pid; }
L="loop=training trainer.space_to_depth_channels=32 trainer.steps_per_execution=8 trainer.shifted_sum_depthwise=strided trainer.relu_gradient_from_output=true style=all trainer.data_worker_processes=true"
C="--models magenta_lite --precisions mixed_bfloat16 --input-dtypes uint8 --batch-sizes 64 --input pipeline --workers 12 --no-pipeline-rate"
REUSE="MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=268435456"
cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null
n=0
for mode in default reuse; do
  n=$((n+1)); E=""; [ $mode = reuse ] && E="$REUSE"
  echo "== $n $mode $(date +%T)"
  env $E timeout 130 python3 benchmarks/train_throughput.py $C --steps 96 --warmup 32 \
      --out $OUT/h200_lite_b64_s16_run3_${n}_${mode}.json --variants "$L" 2>&1 | F | grep -e "^magenta_lite" -e "one batch" | head -2
done
if [ $SECONDS -lt 200 ]; then
  echo "== 3 default $(date +%T)"
  timeout $((292 - SECONDS)) python3 benchmarks/train_throughput.py $C --steps 96 --warmup 32 \
      --out $OUT/h200_lite_b64_s16_run3_3_default.json --variants "$L" 2>&1 | F | grep -e "^magenta_lite" -e "one batch" | head -2
fi
ls -la $OUT
