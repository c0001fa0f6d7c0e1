#!/usr/bin/env bash
# The CUDA check, on a machine with an NVIDIA GPU, its driver, PyTorch and timm, and no internet.
#
# It runs what `scripts/gpu-bundle.sh` prepared on the build machine (target/gpu-bundle: the
# release CUDA binaries, anomalib's wheels, the reference script, synthetic data):
#   parity  the parity test's cases on the GPU (RD_DEVICE=cuda), against fixtures that the
#           reference script computes here with anomalib on the CPU (the shared ones are too big
#           to carry)
#   cli     rd train / predict / eval --device cuda on the synthetic data, and eval on the CPU
#           of the same model, to compare
#   bench   cargo xtask bench --device cuda against anomalib's torch model on the same GPU:
#           inference batch 1 and 32, training step batch 16, 256², resnet18 and wide_resnet50_2
#
# Usage: scripts/gpu-check.sh [parity] [cli] [bench]   (default: all three, in that order)
# The bundle is $RD_GPU_BUNDLE (default target/gpu-bundle). Results go to $OUT (default
# target/gpu-check): summary.txt, env.txt, parity.log, cli.log, bench.log, bench.json, bench.md.
# Each step has a time limit, so one hang does not eat the rest. All three take about 6 minutes
# on an H200 (estimated): with a 10-minute limit a call, run `parity cli` and `bench` apart if
# in doubt.
set -uo pipefail
cd "$(dirname "$0")/.."

parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(parity cli bench)
for part in "${parts[@]}"; do
    case $part in
        parity | cli | bench) ;;
        *) echo "unknown part $part: use parity, cli or bench" >&2; exit 2 ;;
    esac
done
bundle=${RD_GPU_BUNDLE:-target/gpu-bundle}
out=${OUT:-target/gpu-check}
mkdir -p "$out"
out=$(cd "$out" && pwd)
summary="$out/summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }
fail=0

[ -d "$bundle" ] || { note "FAIL: no bundle at $bundle: run scripts/gpu-bundle.sh on the build machine and carry it"; exit 2; }
work=$(mktemp -d /tmp/rd-gpu.XXXXXX)
if [ -f "$bundle/bin.tar.xz" ]; then
    tar -C "$work" -xJf "$bundle/bin.tar.xz"
else
    cp -r "$bundle/bin" "$work/"
fi
bin="$work/bin"

# --- environment: the driver's libcuda, and the CUDA 13 libraries (PyTorch's cu13 wheels hold them)
{
    date -u
    nvidia-smi || true
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))' || true
} >"$out/env.txt" 2>&1
libdirs=$(python3 - <<'EOF' 2>/dev/null
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()]
want = ("libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10", "libnvrtc.so.13")
dirs = []
for r in roots:
    for lib in glob.glob(os.path.join(r, "nvidia", "**", "lib"), recursive=True):
        if any(os.path.exists(os.path.join(lib, w)) for w in want) and lib not in dirs:
            dirs.append(lib)
print(":".join(dirs))
EOF
)
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && libdirs="$libdirs:$d"
done
export LD_LIBRARY_PATH="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >>"$out/env.txt"
missing=$(ldd "$bin/rd" | grep "not found")
if [ -n "$missing" ]; then
    note "FAIL: rd cannot start, libraries not found:"
    note "$missing"
    exit 3
fi
"$bin/rd" --version >>"$out/env.txt" 2>&1

# anomalib and what this machine lacks of it, as carried wheels (no index: nothing is fetched)
if ! python3 -c 'import anomalib' 2>/dev/null; then
    site=/tmp/rd-site
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" "$bundle"/wheels/*.whl >>"$out/env.txt" 2>&1
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! python3 -c 'import anomalib.models.image.reverse_distillation.torch_model' >>"$out/env.txt" 2>&1; then
    note "FAIL: anomalib does not import (see env.txt): parity fixtures and the anomalib side of the bench need it"
fi

# run NAME SECONDS CMD...: runs CMD with a time limit, logging to NAME.log; records pass/fail.
run() {
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    echo "+ $*" >>"$out/$name.log"
    if timeout --kill-after=10 "$limit" "$@" >>"$out/$name.log" 2>&1; then
        note "ok   $name: $* ($((SECONDS - t0)) s)"
    else
        note "FAIL $name (exit $?): $* ($((SECONDS - t0)) s; see $name.log)"
        fail=1
    fi
}

parity() {
    local shared="$work/shared"
    mkdir -p "$shared/parity"
    run parity 120 python3 "$bundle/reference/rd_ref.py" --backbone resnet18 --input-size 64 \
        --threads 8 --out "$shared/parity/resnet18_64x64"
    run parity 120 python3 "$bundle/reference/rd_ref.py" --backbone resnet18 --input-size 64 \
        --threads 8 --dtype float64 --out "$shared/parity/resnet18_64x64_f64"
    run parity 180 env RD_DEVICE=cuda RD_SHARED="$shared" RD_REQUIRE_SHARED=1 \
        "$bin/parity" --test-threads 1 --nocapture
}

cli() {
    local data="$bundle/data/synthetic" m="$work/fabric.safetensors"
    run cli 150 "$bin/rd" train --data "$data" --category fabric --backbone resnet18 \
        --allow-random-teacher --image-size 128 --epochs 3 --batch-size 8 --device cuda -o "$m"
    run cli 60 "$bin/rd" predict --model "$m" "$data/fabric/test/*/*.png" --out "$work/pred" \
        --device cuda
    run cli 60 "$bin/rd" eval --model "$m" --data "$data" --category fabric --device cuda --json
    run cli 120 "$bin/rd" eval --model "$m" --data "$data" --category fabric --device cpu --json
}

bench() {
    # One interleaved run (ours, anomalib, per row); the workers are this xtask and bench_torch.py.
    run bench 420 "$bin/xtask" bench --device cuda --torch-python python3 --rd "$bin/rd" \
        --backbones resnet18,wide_resnet50_2 --rows infer1,infer32,train16 --size 256 \
        --threads 8 --warmup 3 --runs 10 --rounds 1 --json "$out/bench.json"
    # The table is the part of the log after the last `== ` row heading.
    awk '/^\| row/{p=1} p' "$out/bench.log" >"$out/bench.md"
}

for part in "${parts[@]}"; do
    "$part"
done
rm -rf "$work"
exit $fail
