#!/usr/bin/env bash
# The GPU checks, as one script for a lent CUDA machine (never part of CI): the CUDA-only tests, then
# bench/rl_iteration.py in fp32 and bf16 autocast on the default tiny model and on a 4x wider,
# 64 px one. Results land in $OUT (default /tmp/cuda_check).
# The pinned wheels come from .whl/ when the machine lacks them (bench/device_env.sh).
set -u
OUT=${OUT:-/tmp/cuda_check}
mkdir -p "$OUT"
source bench/device_env.sh || exit 1
nvidia-smi -L
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
python3 -m pytest -q -p no:cacheprovider tests/test_devices.py tests/test_stable_diffusion.py -k "cuda or bf16" 2>&1 | tee "$OUT/pytest.log"
for precision in no bf16; do
  python3 bench/rl_iteration.py --device cuda --mixed-precision $precision --repeats 3 --full-iterations 2 \
    --out "$OUT/bench_default_$precision.json" | tail -n 4
done
for precision in no bf16; do
  python3 bench/rl_iteration.py --device cuda --mixed-precision $precision --repeats 3 --channels 64,128,256 \
    --resolution 64 --out "$OUT/bench_wide64_$precision.json" | tail -n 4
done
ls "$OUT"
