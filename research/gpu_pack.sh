#!/usr/bin/env bash
# Packs what research/gpu_h200.sh needs on a lent GPU machine into <checkout>/.gpu (ignored by git
# through .git/info/exclude, sent with the device call's `carry`): cp312 wheels of the packages that
# machine's image lacks (its python3 has torch, torchvision, numpy, pyarrow, pandas, PIL, timm,
# huggingface_hub, matplotlib, ...), the two collections as archives, and this branch's package as
# an importable `lookalike` folder (lib/lookalike/ with flows/ and tasks/ copied in place of their
# links; no bundled sample).
#
# Usage (from the branch's worktree): research/gpu_pack.sh <checkout that the device call sends>
#   PHOTO_COPIES=/tmp/photo-copies FASHION_MNIST=/tmp/fashion-mnist/test (built by make_*.py)
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
DEST=${1:?checkout the device call sends}/.gpu
PHOTO_COPIES=${PHOTO_COPIES:-/tmp/photo-copies}
FASHION_MNIST=${FASHION_MNIST:-/tmp/fashion-mnist/test}
mkdir -p "$DEST/whl" "$DEST/data"

# the versions .venv runs (constraints.txt); typing_extensions because pydantic needs >= 4.16
WHEELS=(lightly==1.6.0 kornia==0.9.0 kornia_rs==0.2.0 pydantic==2.14.4 pydantic_core==2.50.5
  pydantic-settings==2.16.3 python-dotenv==1.2.4 annotated-types==0.8.0 typing-inspection==0.4.5
  typing_extensions==4.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 faiss-cpu==1.15.1)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$DEST/whl" "${WHEELS[@]}"

[ -s "$DEST/data/photo-copies.tar" ] ||
  tar --exclude=.photo_copies.json -cf "$DEST/data/photo-copies.tar" -C "$(dirname "$PHOTO_COPIES")" "$(basename "$PHOTO_COPIES")"
[ -s "$DEST/data/fashion-mnist-10k.tar.gz" ] ||
  tar -czf "$DEST/data/fashion-mnist-10k.tar.gz" -C "$(dirname "$FASHION_MNIST")" "$(basename "$FASHION_MNIST")"

rm -rf "$DEST/src" && mkdir -p "$DEST/src"
cp -rL "$SRC/lib/lookalike" "$DEST/src/lookalike"
rm -rf "$DEST/src/lookalike/data/fashion-mnist-sample"
cp -r "$SRC/benchmarks" "$DEST/src/benchmarks"
cp -r "$SRC/research" "$DEST/src/research"
find "$DEST/src" -name __pycache__ -prune -exec rm -rf {} +
du -sh "$DEST"/*
