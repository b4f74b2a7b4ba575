#!/bin/bash
# Ready for the next GPU session (not run yet): where process-fed style=all training spends its step.
# (1) worker_batch_ms during the timed fit beside a worker's time alone (--pipeline-rate), in one process;
# (2) py-spy samples of a long live row: the training process' threads (all, and the GIL holder) and the workers.
# Carry .whl with the usual wheels plus py-spy (pip download py-spy, manylinux1 x86_64), and this script.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax PYTHONUNBUFFERED=1
F() { grep -v -e WARNING -e I0000 -e E0000 -e DeprecationWarning -e os.fork -e self.pid; }
L="loop=training trainer.space_to_depth_channels=32 trainer.steps_per_execution=8 trainer.shifted_sum_depthwise=strided trainer.relu_gradient_from_output=true style=all trainer.data_worker_processes=true"
C="--models magenta_lite --precisions mixed_bfloat16 --input-dtypes uint8 --batch-sizes 64 --input pipeline --workers 12"
timeout 200 python3 benchmarks/train_throughput.py $C --steps 96 --warmup 32 --out $OUT/h200_lite_b64_s17_worker_time.json \
    --variants "$L" "$L trainer.data_workers=8" 2>&1 | F | tail -6
SPY=/tmp/site/bin/py-spy
python3 benchmarks/train_throughput.py $C --no-pipeline-rate --steps 2400 --warmup 32 --out $OUT/h200_lite_b64_s17_profiled.json \
    --variants "$L" > $OUT/profiled.log 2>&1 &
P=$!
sleep 70  # past the compile: the timed fit runs for about 70 s
timeout 15 $SPY dump --pid $P > $OUT/dump.txt 2>&1; head -40 $OUT/dump.txt
timeout 25 $SPY record --pid $P --nonblocking -r 200 -d 12 --threads --idle --format raw -o $OUT/all.txt 2>&1 | tail -1
timeout 25 $SPY record --pid $P --nonblocking -r 200 -d 12 --threads --gil --format raw -o $OUT/gil.txt 2>&1 | tail -1
timeout 20 $SPY record --pid $P --nonblocking --subprocesses -r 50 -d 8 --idle --format raw -o $OUT/workers.txt 2>&1 | tail -1
top -b -n 1 | head -24 > $OUT/top.txt
kill $P
ls -la $OUT
