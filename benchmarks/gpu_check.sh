#!/usr/bin/env bash
# The GPU checks of issue #6 in one run, for a lent accelerator machine (the `device` tool):
# the ResNet-18 overhead benchmark (watched / bare ratios, host reads, CUDA syncs per step)
# and the CUDA tests of check_module. Results go to $OUT (or ./gpu-results).
#
# The H200 image has torch, numpy, matplotlib, tqdm and tensorboard but not tensorboardX or
# crc32c; carry their wheels in .whl/ (git-ignored through .git/info/exclude), fetched here
# with:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl tensorboardX crc32c
# then run it through the device tool with carry [".whl"]:  bash benchmarks/gpu_check.sh
# (about 5 minutes on an H200: ~70 runs of 240 ResNet-18 steps; the histogram round is at
# step 0, the gradient check at step 50). Worth a look in the output: the device histogram
# path counts with index_add_ into 65 buckets, which on a GPU is atomics on 65 addresses; if
# "only HistogramMonitor" is far over budget, bucket with torch.histc on ranges read in one
# batched transfer instead (one sync more per histogram step).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-results}"
mkdir -p "$out"
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "no CUDA device: nothing to check here"; exit 1; }
if ! python3 -c "import tensorboardX, crc32c" 2>/dev/null; then
    python3 -m pip install -q --no-index --find-links .whl tensorboardX crc32c
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>/dev/null \
    || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$out/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/torch/test_check_module.py -k cuda 2>&1 \
    | tee "$out/cuda_tests.txt"
python3 benchmarks/torch_overhead.py --skip-cpu --pairs 5 --gpu-steps 240 --only HistogramMonitor \
    --only GradientCheck 2>&1 \
    | tee "$out/overhead.txt"
