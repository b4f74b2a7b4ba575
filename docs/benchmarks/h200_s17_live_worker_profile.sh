#!/bin/bash
# Session 17, run 1 (ran at e0332bf): worker time during the fit; py-spy of a live row (the samples fell in the compile: see run 2).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax PYTHONUNBUFFERED=1
F() { grep -v -e WARNING -e I0000 -e E0000 -e DeprecationWarning -e os.fork -e self.pid; }
L="loop=training trainer.space_to_depth_channels=32 trainer.steps_per_execution=8 trainer.shifted_sum_depthwise=strided trainer.relu_gradient_from_output=true style=all trainer.data_worker_processes=true"
C="--models magenta_lite --precisions mixed_bfloat16 --input-dtypes uint8 --batch-sizes 64 --input pipeline --workers 12"
SPY=/tmp/site/bin/py-spy
nproc; python3 --version; cat /proc/sys/kernel/yama/ptrace_scope 2>&1; grep CapEff /proc/self/status
python3 -c 'import time; time.sleep(4)' & Q=$!; sleep 1
if timeout 10 $SPY dump --pid $Q > $OUT/spycheck.txt 2>&1; then ATTACH=1; else ATTACH=0; fi; wait $Q
echo "attach=$ATTACH"; head -5 $OUT/spycheck.txt
timeout 200 python3 benchmarks/train_throughput.py $C --steps 96 --warmup 32 --out $OUT/h200_lite_b64_s17_worker_time.json \
    --variants "$L" "$L trainer.data_workers=8" 2>&1 | F | tail -8
PROF="benchmarks/train_throughput.py $C --no-pipeline-rate --steps 4000 --warmup 32 --out $OUT/h200_lite_b64_s17_profiled.json --variants"
if [ $ATTACH = 1 ]; then
  python3 $PROF "$L" > $OUT/profiled.log 2>&1 &
  P=$!
else
  $SPY record -r 100 --threads --idle --subprocesses --nonblocking --format raw -o $OUT/launched_all.txt -- python3 $PROF "$L" > $OUT/profiled.log 2>&1 &
  sleep 5; P=$(pgrep -f -o "train_throughput.py.*s17_profiled")
fi
echo "profiled pid $P"
sleep 70  # past the compile: 4000 steps keep the timed fit running for about 115 s
cat /proc/loadavg; top -b -n 2 -d 4 | awk '/^top -/{n++} n==2' | head -30 > $OUT/top.txt
top -b -H -n 2 -d 4 -p $P | awk '/^top -/{n++} n==2' | head -30 > $OUT/top_threads.txt
head -50 $OUT/top.txt; head -25 $OUT/top_threads.txt
if [ $ATTACH = 1 ]; then
  timeout 15 $SPY dump --pid $P > $OUT/dump.txt 2>&1; head -40 $OUT/dump.txt
  timeout 25 $SPY record --pid $P --nonblocking -r 200 -d 12 --threads --idle --format raw -o $OUT/all.txt 2>&1 | tail -1
  timeout 25 $SPY record --pid $P --nonblocking -r 200 -d 12 --threads --gil --format raw -o $OUT/gil.txt 2>&1 | tail -1
  timeout 20 $SPY record --pid $P --nonblocking --subprocesses -r 50 -d 8 --idle --format raw -o $OUT/workers.txt 2>&1 | tail -1
  kill $P
else
  wait
fi
grep -v -e WARNING -e I0000 -e E0000 $OUT/profiled.log | tail -5
ls -la $OUT
