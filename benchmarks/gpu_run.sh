#!/usr/bin/env bash
# One GPU session's measurements (issue 14), run on a lent CUDA machine from the repository
# root, with the Papalexi file in $PYRO_COMPARE_DATA_DIR and the results written to $1:
#   1. benchmarks/particles.py on CUDA for every perturbation model (K=5 vectorised / looped
#      vs one particle, the "ratio" key),
#   2. the CUDA tests (tests/infer/test_distributed.py -k cuda),
#   3. experiments/papalexi/defaults.py --device cuda for the models other than the default
#      SAMSVAE (mean-field SAMSVAE, SparseShiftVAE, AdditiveShiftVAE, ConditionalVAE), seeds
#      0-2, one process per fit, trained on the GPU and evaluated on the CPU.
# Usage: bash benchmarks/gpu_run.sh OUT_DIR [FIT_TIMEOUT_S]
set -u
out=${1:?output folder}
fit_timeout=${2:-420}
mkdir -p "$out/table"
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
for s in 0 1 2; do
    for m in SAMSVAE:mean_field SparseShiftVAE AdditiveShiftVAE ConditionalVAE; do
        name=${m%%:*}
        extra=()
        [[ $m == *:* ]] && extra=(--guide "${m#*:}")
        OMP_NUM_THREADS=1 timeout "$fit_timeout" python3 experiments/papalexi/defaults.py \
            --model "$name" "${extra[@]}" --seeds "$s" --threads 1 --device cuda \
            --iwelbo-particles 20 --out "$out/table/${name}${extra[1]:+_${extra[1]}}_seed$s.json" \
            >"$out/table/${name}${extra[1]:+_${extra[1]}}_seed$s.log" 2>&1 &
    done
done
wait
ls "$out/table"
