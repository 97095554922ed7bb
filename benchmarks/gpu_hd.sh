#!/bin/bash
# Visium HD on one GPU (issue 10): the 400,000-bin benchmark sample of BENCHMARKS.md, simulated, QC'd and
# mapped with `spotmap map --device cuda`, then scored against the simulated truth (bench_hd_scale.py).
#
# usage: benchmarks/gpu_hd.sh WORKDIR [MAX_EPOCHS] [BATCH_SIZE]
#   MAX_EPOCHS  upper bound; the convergence rule may stop earlier (default 1000)
#   BATCH_SIZE  bins per step (default 1000000: the whole sample in one step, which fits a 80 GB GPU)
# Environment: PYTHON (default python3) must import spotmap (e.g. PYTHONPATH=src) and see a CUDA GPU;
# DEVICE (default cuda) and N_BINS (default 400000) exist to dry-run the script on a CPU; MAP_ARGS adds
# `spotmap map` options to the big run (e.g. MAP_ARGS="--tol 5e-5").
#
# A small sample is mapped on the GPU first, while the big one is being simulated, so a broken CUDA path
# fails within a minute. GPU memory in use is sampled every 0.2 s by nvidia-smi (gpu_mem.csv); the mapping
# also logs torch's own peak (`GPU memory: ...` in map_full.log, uns['mod']['gpu_memory_gb'] in sp.h5ad).
set -euo pipefail
W=${1:?usage: gpu_hd.sh WORKDIR [MAX_EPOCHS] [BATCH_SIZE]}
EPOCHS=${2:-1000}
BATCH=${3:-1000000}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
N_BINS=${N_BINS:-400000}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$W"
stamp() { echo "$(date -u +%T) $*" | tee -a "$W/times.txt"; }

SMI=
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$W/gpu.txt"
    nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 200 > "$W/gpu_mem.csv" &
    SMI=$!
fi
trap '[ -n "$SMI" ] && kill $SMI 2>/dev/null; true' EXIT

stamp "simulate $N_BINS bins (background)"
( $PY -m spotmap simulate --platform visium-hd \
    --n-bins "$N_BINS" --n-genes 18000 --n-cell-types 40 --n-samples 1 --seed 0 --outdir "$W/sim" \
    > "$W/sim.log" 2>&1; stamp "simulate done" ) &
SIM=$!

stamp "smoke test: 3,000 bins on $DEVICE"
$PY -m spotmap simulate --platform visium-hd --n-bins 3000 --n-genes 2000 --n-cell-types 8 --n-samples 1 \
    --seed 1 --outdir "$W/small" > "$W/small.log" 2>&1
$PY -m spotmap qc --sample sample1 --input "$W/small/samples/sample1/outs" --outdir "$W/small_qc" >> "$W/small.log" 2>&1
$PY -m spotmap map --spatial "$W/small_qc/sample1.h5ad" --signatures "$W/small/truth/signatures.csv" \
    --outdir "$W/small_map" --device "$DEVICE" --likelihood sparse --batch-size "$BATCH" --max-epochs 30 \
    --checkpoint-every 0 --n-cells-per-location 1.5 >> "$W/small.log" 2>&1 \
    || { tail -30 "$W/small.log"; kill $SIM; exit 1; }
grep -E "spots ×|GPU memory" "$W/small.log"
stamp "smoke test passed"

wait $SIM || { tail -20 "$W/sim.log"; exit 1; }
stamp "qc"
$PY -m spotmap qc --sample sample1 \
    --input "$W/sim/samples/sample1/outs" --outdir "$W/qc" > "$W/qc.log" 2>&1
stamp "map on $DEVICE (bench_hd_scale.py --part full)"
$PY "$HERE/bench_hd_scale.py" --qc "$W/qc/sample1.h5ad" --sim "$W/sim" --outdir "$W/bench" --part full \
    --batch-size "$BATCH" --max-epochs "$EPOCHS" --threads 16 --map-args="--device $DEVICE ${MAP_ARGS:-}"
stamp "done"
grep -E "spots ×|GPU memory|epoch|wrote" "$W/bench/map_full.log" || true
[ -s "$W/gpu_mem.csv" ] && awk -F', ' '{ if ($2 > m) m = $2 } END { print "nvidia-smi: most GPU memory in use " m " MiB" }' "$W/gpu_mem.csv"
