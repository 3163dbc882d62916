#!/usr/bin/env bash
# The GPU figures in one go, for a lent GPU machine: encoding throughput (fp32, bf16) and training throughput
# (32-true, bf16-mixed) with CUDA, JSON into $OUT (the device tool's folder) or bench/results. About 5 minutes
# on an H200; budget 8.
#
#   bash bench/gpu.sh prepare            # here, first: wheels the GPU machine lacks (.whl/, Python 3.12) and a
#                                        # copy of the real recordings (.gpu_data/); both git-ignored
#   bash bench/gpu.sh                    # there (device run, carry [".whl", ".gpu_data"])
#   DEVICE=cpu SMOKE=1 bash bench/gpu.sh # the same steps on the CPU, seconds (the test suite runs this)
#   PRETRAIN_MINUTES=6 bash bench/gpu.sh # also pretrain with the best recipe for 6 minutes (gpu_pretrain/ in $OUT)
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
DEST=${OUT:-bench/results}

if [ "${1:-}" = prepare ]; then
  # What the GPU image lacks of ecovae's dependencies (bench/README.md lists what it has); no internet there.
  rm -rf .whl && mkdir -p .whl
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    soundfile soxr librosa audioread pooch decorator scikit-maad umap-learn pynndescent captum
  rm -rf .gpu_data && mkdir -p .gpu_data
  cp -r ../shared/data/MANIFEST.csv ../shared/data/maad_jura_diel .gpu_data/
  du -sh .whl .gpu_data
  exit 0
fi

if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -d .gpu_data ]; then export ECOVAE_SHARED_DATA="$PWD/.gpu_data"; fi
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
smoke=()
if [ -n "${SMOKE:-}" ]; then smoke=(--smoke); fi
tag=$(echo "$DEVICE" | tr -d ':')

cd bench
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
"$PY" encode_throughput.py --device "$DEVICE" --modes fp32 bf16 --batch-sizes 4 8 16 "${smoke[@]}" \
  --out "$DEST/encode_throughput_$tag.json" 2>&1 | tee "$DEST/encode_throughput_$tag.log"
for p in 32-true bf16-mixed; do
  "$PY" train_throughput.py --device "$DEVICE" --precision "$p" --curve-steps 0 "${smoke[@]}" \
    --out "$DEST/train_throughput_${tag}_$p.json" 2>&1 | tee "$DEST/train_throughput_${tag}_$p.log"
done

# Pretraining with the best recipe (bench/pretrain.py, RECIPES), for the minutes left of the lease: the corpus is
# the real recordings carried (.gpu_data) and simulated worlds written there; the run folder (weights at every
# kept step, config, metrics) comes back in $DEST/gpu_pretrain to be benchmarked and shipped here.
if [ -n "${PRETRAIN_MINUTES:-}" ]; then
  "$PY" pretrain.py train --recipe "${RECIPE:-paper}" --preset "${PRESET:-small}" --accelerator gpu \
    --minutes "$PRETRAIN_MINUTES" --keep-every "${KEEP_EVERY:-2000}" --work /tmp/ecovae-pretrain \
    --worlds "${WORLDS:-60}" 2>&1 | tail -n 40 | tee "$DEST/gpu_pretrain.log"
  mkdir -p "$DEST/gpu_pretrain"
  run=$(ls -d /tmp/ecovae-pretrain/run_* | head -n 1)
  cp -r "$run/weights" "$run/config.json" "$run/metrics.csv" "$DEST/gpu_pretrain/" 2>/dev/null || true
fi
