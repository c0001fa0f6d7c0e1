#!/usr/bin/env bash
# Prepares target/gpu-bundle, everything `scripts/gpu-check.sh` needs on a GPU machine that has
# the NVIDIA driver, PyTorch and timm but no internet and no Rust:
#   bin.tar.xz   rd, xtask and the parity test, release builds with --features cuda
#   wheels/      anomalib 2.7.0 and those of its imports such a machine lacks (CPython 3.12)
#   reference/   rd_ref.py from $RD_SHARED, which computes the parity fixtures there
#   data/        the synthetic dataset for the rd train / predict / eval runs
# It fits the 64 MiB a GPU call may carry. Run it on this machine (no GPU needed); the first run
# compiles candle's CUDA kernels (about 11 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bundle=$root/target/gpu-bundle
shared=${RD_SHARED:-$root/../shared}
[ -f "$shared/reference/rd_ref.py" ] || { echo "error: no $shared/reference/rd_ref.py: set RD_SHARED" >&2; exit 1; }

rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/wheels" "$bundle/reference" "$bundle/data"

echo "== synthetic data" >&2
cargo run -q -p rd-dataset --example synth_demo -- "$bundle/data/synthetic" >&2

echo "== CUDA builds" >&2
eval "$(cargo xtask cuda-toolkit)"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/cuda}
cargo build --release -p rd-cli -p xtask --features rd-cli/cuda,xtask/cuda
parity=$(cargo test --release -p rd-tests --test parity --features rd-tests/cuda --no-run \
    --message-format=json | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | grep parity | tail -1)
[ -x "$parity" ] || { echo "error: no parity test binary" >&2; exit 1; }
cp "$CARGO_TARGET_DIR/release/rd" "$CARGO_TARGET_DIR/release/xtask" "$bundle/bin/"
cp "$parity" "$bundle/bin/parity"
strip "$bundle/bin/"*
echo "== compressing the binaries" >&2
tar -C "$bundle" -cf - bin | xz -T0 -6 >"$bundle/bin.tar.xz"
rm -rf "$bundle/bin"

echo "== anomalib wheels" >&2
pydl() {
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform any --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$bundle/wheels" "$@"
}
pydl anomalib==2.7.0 jsonargparse==4.46.0 kornia==0.9.0 kornia_rs==0.2.0 omegaconf==2.4.0 \
    platformdirs==4.14.8 truststore==0.10.5 typeshed_client==2.15.0 docstring-parser==0.18.0 \
    rich-argparse==1.8.0
# FrEIA publishes no wheel: build its pure-Python one here.
python3 -m pip wheel -q --no-deps -w "$bundle/wheels" FrEIA==0.2

cp "$shared/reference/rd_ref.py" "$bundle/reference/"

size=$(du -sm "$bundle" | cut -f1)
echo "target/gpu-bundle: $size MiB (a GPU call carries 64 MiB with the working tree)" >&2
[ "$size" -lt 60 ] || { echo "error: the bundle is too big to carry" >&2; exit 1; }
echo "next, on the GPU machine: carry target/gpu-bundle and run scripts/gpu-check.sh" >&2
