#!/bin/bash
# Session 17, run 2 (ran at e0332bf): py-spy samples of the training process during 1800-step fits, live then premade, in one process.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax PYTHONUNBUFFERED=1
L="loop=training trainer.space_to_depth_channels=32 trainer.steps_per_execution=8 trainer.shifted_sum_depthwise=strided trainer.relu_gradient_from_output=true style=all trainer.data_worker_processes=true"
C="--models magenta_lite --precisions mixed_bfloat16 --input-dtypes uint8 --batch-sizes 64 --input pipeline --workers 12"
SPY=/tmp/site/bin/py-spy
python3 benchmarks/train_throughput.py $C --no-pipeline-rate --steps 1800 --warmup 32 --out $OUT/h200_lite_b64_s17_profiled.json \
    --variants "$L" "$L feed=premade" > $OUT/profiled.log 2>&1 &
P=$!
in_fit() { timeout 10 $SPY dump --pid $P 2>/dev/null | grep -q timed_train_function; }
sample() {  # $1: name
  timeout 20 $SPY record --pid $P --nonblocking -r 100 -d 10 --threads --idle --native --format raw -o $OUT/$1_native.txt > $OUT/$1_native.log 2>&1
  timeout 15 $SPY record --pid $P --nonblocking -r 100 -d 6 --threads --gil --format raw -o $OUT/$1_gil.txt > /dev/null 2>&1
  timeout 15 $SPY record --pid $P --nonblocking -r 100 -d 6 --threads --idle --format raw -o $OUT/$1_py.txt > /dev/null 2>&1
  timeout 10 $SPY dump --pid $P > $OUT/$1_dump.txt 2>&1
  echo "$1 sampled at $SECONDS s"; tail -2 $OUT/$1_native.log
}
for i in $(seq 200); do in_fit && break; sleep 2; done; echo "live fit at $SECONDS s"
top -b -n 2 -d 3 | awk '/^top -/{n++} n==2' | head -24 > $OUT/live_top.txt
sample live
timeout 15 $SPY record --pid $P --nonblocking --subprocesses -r 50 -d 5 --idle --format raw -o $OUT/live_workers.txt > /dev/null 2>&1
for i in $(seq 200); do in_fit || break; sleep 2; done; echo "live fit over at $SECONDS s"
for i in $(seq 200); do in_fit && break; sleep 2; done; echo "premade fit at $SECONDS s"
sample premade
wait $P
grep -v -e WARNING -e I0000 -e E0000 -e DeprecationWarning -e os.fork -e self.pid $OUT/profiled.log | tail -8
cd $OUT && tar czf spy.tar.gz *.txt *.log && rm -f *_*.txt && ls -la
