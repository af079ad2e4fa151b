#!/usr/bin/env bash
# The GPU benchmarks of issue 11, unattended, < 5 minutes on one H100/H200, with python3 + JAX only
# (NumPy and SciPy; the pure-Python mrcfile wheel comes from benchmarks/wheels; no TensorFlow,
# pandas, scikit-learn or tqdm needed).  Run from the repository root:
#
#     bash benchmarks/gpu_run.sh            # → benchmarks/results/{gpu_checks,bench_align_gpu,bench_iteration_gpu}.json
#
# Each step has its own time limit; a step that runs out still leaves its JSON (written as it goes).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD:$PWD/benchmarks/wheels/mrcfile-1.4.3-py2.py3-none-any.whl${PYTHONPATH:+:$PYTHONPATH}"
export GMMCORE_NO_PROGRESS=1
PY=${PYTHON:-python3}
mkdir -p benchmarks/results
"$PY" -c "import jax, numpy, scipy; print('jax', jax.__version__, 'numpy', numpy.__version__, jax.devices())" || exit 1
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv 2>/dev/null || true
start=$(date +%s)

# 1. correctness on the device (≈ 30 s): TF32 / TF32x3 poses vs float32, device reconstruction, GMM fit
timeout 60 "$PY" benchmarks/gpu_checks.py 2>&1 | tail -5

# 2. alignment step vs the reference kernel, cases i-iii (≈ 150 s; stops starting new points at 150 s)
timeout 200 "$PY" benchmarks/bench_align.py --backends jax --cases i ii iii --batches 16 64 256 1024 \
    --ref-steps 10 50 --ref-steps-batches 256 --matmul fp32 tf32 --matmul-batches 256 \
    --seconds 1.5 --budget 150 --out benchmarks/results/bench_align_gpu.json 2>&1 | grep -v -i warning

# 3. one whole iteration: 4,000 particles at box 196, 3 Å (the extrapolation's geometry) (≈ 60 s)
left=$(( 285 - ($(date +%s) - start) ))
if [ "$left" -gt 40 ]; then
  timeout "$left" "$PY" benchmarks/bench_iteration.py --backend jax --n 4000 --box 196 --apix 1.0 --resolution 3 \
      --ngauss 4000 --out benchmarks/results/bench_iteration_gpu.json 2>&1 | grep -v -i warning
else
  echo "bench_iteration skipped: ${left} s left"
fi
echo "total $(( $(date +%s) - start )) s"
