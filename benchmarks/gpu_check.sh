#!/usr/bin/env bash
# The device check: the GPU-marked tests and the CUDA timings, in one short script.
# (The gpu tests live in the files named below; collecting the whole suite there would need
# POT and opacus as well. The Hugging Face file runs whole, CPU and CUDA cases: the device image
# has transformers and peft.)
# On the device machine (torch, botorch, gpytorch preinstalled), with pyro-ppl and pyro-api
# carried as wheels in .whl/ (see docs/results.md, "GPU check"):
#   bash benchmarks/gpu_check.sh            # writes logs and JSON under $OUT (or benchmarks/out)
#   TIMING=--grasp bash benchmarks/gpu_check.sh   # only the GRASP overhead timings
set -uo pipefail
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1 PROBML_QUIET=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu_info.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
  | tee -a "$OUT/gpu_info.txt"
python3 -m pip list 2>/dev/null | grep -i -E "^(transformers|peft|pyro-ppl) " | tee -a "$OUT/gpu_info.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/inference/test_projection.py -m gpu 2>&1 | tee "$OUT/gpu_tests.log"
python3 -m pytest -q -p no:cacheprovider tests/inference/test_projection_hf.py 2>&1 | tee "$OUT/hf_tests.log"
python3 benchmarks/gpu_timing.py ${QUICK:+--quick} ${TIMING:-} --out "$OUT" 2>&1 | tee "$OUT/gpu_timing.log"
