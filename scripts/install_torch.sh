#!/bin/sh
# Install torch into a fresh venv without pulling a multi-GB CUDA build where no GPU is.
# usage: install_torch.sh PYTHON VERSION
set -e
py=$1; version=$2
if command -v nvidia-smi >/dev/null 2>&1; then
    exec "$py" -m pip install -q "torch==$version"          # CUDA build from PyPI
fi
# No NVIDIA GPU: a local wheel (pip's find-links) or the CPU index of pytorch.org.
if "$py" -m pip download -q --no-deps --no-index -d /tmp/kit-torch "torch==$version" >/dev/null 2>&1; then
    exec "$py" -m pip install -q --find-links /tmp/kit-torch "torch==$version"   # +cpu sorts first
fi
if curl -s --max-time 5 -o /dev/null https://download.pytorch.org/whl/cpu/; then
    exec "$py" -m pip install -q "torch==$version" --index-url https://download.pytorch.org/whl/cpu
fi
exec "$py" -m pip install -q "torch==$version"
