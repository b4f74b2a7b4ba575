#!/bin/bash
# Session 17, run 3 (ran at 3cf1638): short against long live fits and premade, in one process, with where each fit spends its time.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax PYTHONUNBUFFERED=1
L="loop=training trainer.space_to_depth_channels=32 trainer.steps_per_execution=8 trainer.shifted_sum_depthwise=strided trainer.relu_gradient_from_output=true style=all trainer.data_worker_processes=true"
timeout 520 python3 benchmarks/train_throughput.py --models magenta_lite --precisions mixed_bfloat16 --input-dtypes uint8 \
    --batch-sizes 64 --input pipeline --workers 12 --no-pipeline-rate --warmup 32 --steps 96 \
    --out $OUT/h200_lite_b64_s17_run3_fit_length.json --variants "$L" "$L feed=premade" "$L steps=1800" "$L" 2>&1 \
    | grep -v -e WARNING -e I0000 -e E0000 -e DeprecationWarning -e os.fork -e self.pid | tail -16
