#!/usr/bin/env bash
# One GPU session's measurements (issue 14), run on a lent CUDA machine from the repository
# root, with the Papalexi file in $PYRO_COMPARE_DATA_DIR and the results written to $1:
#   1. benchmarks/particles.py on CUDA for every perturbation model (K=5 vectorised / looped
#      vs one particle, the "ratio" key),
#   2. the CUDA tests (tests/infer/test_distributed.py -k cuda).
# The results of the session of 2026-11-26 (H200) are benchmarks/results/particles_cuda_*.json.
# (Training the Papalexi table on the GPU as well, 6 concurrent one-thread CUDA fits, did not
# finish 300 epochs in 330 s: these small models are launch-bound, so the table is run on CPU.)
# Usage: bash benchmarks/gpu_run.sh OUT_DIR
set -u
out=${1:?output folder}
mkdir -p "$out"
data="$PYRO_COMPARE_DATA_DIR/papalexi2021_sceptre_lowmoi_counts.h5ad"
nvidia-smi -L
for m in SAMSVAE AdditiveShiftVAE SparseShiftVAE ConditionalVAE; do
    timeout 150 python3 benchmarks/particles.py --model "$m" --device cuda --data "$data" \
        >"$out/particles_cuda_$m.json" 2>"$out/particles_cuda_$m.log"
    echo "particles $m rc=$?"
done
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/infer/test_distributed.py -k cuda \
    >"$out/cuda_tests.log" 2>&1
echo "cuda tests rc=$?"
tail -3 "$out/cuda_tests.log"
