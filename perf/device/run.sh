#!/usr/bin/env bash
# Runs on a lent NVIDIA machine from the project's root, with .gl and .devrun carried (see
# prepare.sh): the adapter, the bench one process per shape and then all shapes in one
# process (times there depend on what the process ran before: PERF.md 41), PyTorch's CUDA
# batch norm on the same card, and the test suites that run kernels. Everything lands in
# $OUT: log.txt, bench-each.csv, bench-all.csv, torch.csv, tests.log.
set -u
out=${OUT:-/tmp/out}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 XDG_RUNTIME_DIR=/tmp/xdg WGPU_BACKEND=${WGPU_BACKEND:-vulkan}
mkdir -p -m 700 /tmp/xdg
log=$out/log.txt
exec 3>&1
say() { echo "$*" | tee -a "$log" >&3; }
step() {
  local name=$1 t=$2; shift 2
  local s=$SECONDS; timeout "$t" "$@"; local rc=$?
  say "== $name rc=$rc ${SECONDS}s total, step $((SECONDS - s))s"
}

gpu=$(command -v nvidia-smi || true)
if [ -n "$gpu" ]; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
  { date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; } 2>&1 | tee "$log"
  # Where this image keeps the driver's Vulkan ICD and its library: a first call that only
  # set VK_DRIVER_FILES to the documented path found no adapter (PERF.md 41).
  icd=$(timeout 30 find /usr /etc /lib -name 'nvidia_icd*.json' 2>/dev/null | head -1)
  glx=$(timeout 30 find /usr /lib -name 'libGLX_nvidia.so.0' 2>/dev/null | head -1)
  say "icd=[$icd] glx=[$glx]"
  [ -n "$icd" ] && export VK_DRIVER_FILES=$icd
  [ -n "$glx" ] && export LD_LIBRARY_PATH=$(dirname "$glx")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
if ! .devrun/batchnorm info 2>&1 | tee -a "$log" >&3; then
  VK_LOADER_DEBUG=error,warn,driver .devrun/batchnorm info 2>&1 | head -40 >> "$log"
  say "no adapter"
  [ -n "$gpu" ] && step torch 100 python3 .devrun/torch_bn_cuda.py > "$out/torch.csv" 2>>"$log"
  exit 1
fi

shapes=${SHAPES:-8x64x56x56 32x64x56x56 64x256x14x14 16x2048x7x7 1024x4096 64x256x56x56}
layouts=${LAYOUTS:-nchw nhwc}
for sh in $shapes; do
  ls=$layouts
  case $sh in *x*x*) ;; *) ls=nchw ;; esac  # (N, C) has one layout
  for l in $ls; do
    step "bench $sh $l" 40 .devrun/batchnorm bench --format csv --iters 50 --shape "$sh" \
      --layout "$l" >> "$out/bench-each.csv" 2>>"$log"
  done
done
[ -n "$gpu" ] && step torch 60 python3 .devrun/torch_bn_cuda.py > "$out/torch.csv" 2>>"$log"
step "bench all" 90 .devrun/batchnorm bench --format csv --iters 50 \
  --shape "$(echo $shapes | tr ' ' ,)" > "$out/bench-all.csv" 2>>"$log"

# Paths compiled into the tests (CARGO_MANIFEST_DIR, the CLI's binary) point at the
# checkout they were built in (prepare.sh wrote it down); link it here if this is elsewhere.
built=$(cat .devrun/built_in)
if [ ! -e "$built" ]; then mkdir -p "$(dirname "$built")" && ln -s "$PWD" "$built"; fi
mkdir -p target/release && cp .devrun/batchnorm target/release/batchnorm
mkdir -p /tmp/tb && tar -C /tmp/tb -xJf .devrun/tests.tar.xz
for t in /tmp/tb/*; do
  step "test $(basename "$t")" "${TEST_TIMEOUT:-60}" "$t" --test-threads=8 >> "$out/tests.log" 2>&1
done
grep -E "^test result|FAILED|panicked" "$out/tests.log" | tee -a "$log" >&3
