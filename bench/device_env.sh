# Sourced by the scripts that run on a lent GPU machine (bench/cuda_check.sh,
# experiments/gpu_composition.sh). Wheels in .whl/ (the pinned diffusers/transformers/pydantic,
# `pip download`ed) are installed to /tmp/site when the machine lacks the pinned diffusers; the
# network is closed and the hub offline.
pinned=$(sed -n 's/.*"diffusers==\([^"]*\)".*/\1/p' pyproject.toml)
if [ -d .whl ] && ! python3 -c "import diffusers, sys; sys.exit(diffusers.__version__ != '$pinned')" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || return 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
