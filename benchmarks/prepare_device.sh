#!/usr/bin/env bash
# Run HERE (the CPU machine, with network to PyPI) before a GPU session: everything the GPU
# scripts need that the GPU machine (PyTorch image, no network) lacks, into two ignored
# folders that the device call carries:
#   .whl/          wheels of ssal's dependencies (not PyTorch's: the image has torch,
#                  torchvision and their CUDA libraries) + closure.json (what to install)
#   .device_data/  Fashion-MNIST's four *-ubyte.gz (only the study needs it)
# On the device, benchmarks/device_setup.py installs from .whl only what the image lacks.
#
# Usage: bash benchmarks/prepare_device.sh            (PYTHON: an environment where ssal works)
#   PY_VERSIONS="3.10 3.11 3.12 3.13"  CPython versions to fetch binary wheels for
#   SKIP="matplotlib tensorboard numpy pillow"  left out: matplotlib and tensorboard only draw
#       reports and TensorBoard logs, which the device scripts never make (and, with their
#       dependencies, weigh 35 MB: the device call carries 64 MiB in all); numpy and pillow
#       come with every PyTorch image (torchvision needs pillow)
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
PY_VERSIONS=${PY_VERSIONS:-"3.10 3.11 3.12 3.13"}
SKIP=${SKIP:-"matplotlib tensorboard numpy pillow"}
FASHION=${FASHION:-/usr/share/datasets/fashion-mnist}

mkdir -p .whl
# shellcheck disable=SC2086
"$PYTHON" benchmarks/device_closure.py .whl/closure.json $SKIP > .whl/pins.txt
echo "ssal's dependencies beyond PyTorch ($(wc -l < .whl/pins.txt)): $(tr '\n' ' ' < .whl/pins.txt)"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
  manylinux_2_5_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
failed=()
for v in $PY_VERSIONS; do
  while read -r pin; do
    # one at a time: a version without a wheel for one Python must not stop the others
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d .whl --python-version "$v" \
      --implementation cp "${platforms[@]}" "$pin" >/dev/null 2>&1 || failed+=("$pin@$v")
  done < .whl/pins.txt
done
[ ${#failed[@]} -eq 0 ] || echo "no wheel for: ${failed[*]} (fine unless the device runs that Python)"
du -sh .whl

if [ -d "$FASHION" ]; then
  mkdir -p .device_data/fashion-mnist
  cp "$FASHION"/*-ubyte.gz .device_data/fashion-mnist/
  du -sh .device_data
else
  echo "no Fashion-MNIST at $FASHION: the study needs it (apt-get install dataset-fashion-mnist)"
fi
du -shc .whl .device_data 2>/dev/null | tail -1
