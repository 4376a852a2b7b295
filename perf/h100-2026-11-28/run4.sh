#!/usr/bin/env bash
# Runs on the lent GPU machine from the project's root, with .gl and .devrun carried.
set -u
out=${OUT:-/tmp/out}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 XDG_RUNTIME_DIR=/tmp/xdg WGPU_BACKEND=${WGPU_BACKEND:-vulkan}
mkdir -p -m 700 /tmp/xdg
log=$out/log.txt
exec 3>&1
if ls .gl/*.deb >/dev/null 2>&1 && command -v nvidia-smi >/dev/null; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
fi
{ date -u; pwd; nproc; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader; } 2>&1 | tee "$log"
# Find the NVIDIA Vulkan driver (and EGL vendor file) wherever this image keeps them.
if command -v nvidia-smi >/dev/null; then
  {
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
    ls -la /usr/local/nvidia /usr/local/nvidia/share/vulkan/icd.d /usr/share/vulkan/icd.d /etc/vulkan/icd.d 2>&1
    ldconfig -p | grep -iE 'libvulkan|GLX_nvidia|EGL_nvidia|libcuda\.' 
  } >> "$log" 2>&1
  icds=$(timeout 30 find /usr /etc /lib /opt -name 'nvidia_icd*.json' 2>/dev/null)
  eglv=$(timeout 30 find /usr /etc /lib -name '*nvidia*.json' -path '*egl_vendor*' 2>/dev/null | head -1)
  glx=$(timeout 30 find /usr /lib /opt -name 'libGLX_nvidia.so.0' 2>/dev/null | head -1)
  echo "icds=[$icds] eglv=[$eglv] glx=[$glx]" | tee -a "$log"
  for i in $icds; do echo "--- $i"; cat "$i"; done >> "$log" 2>&1
  icd=$(echo "$icds" | head -1)
  [ -n "$icd" ] && export VK_DRIVER_FILES=$icd
  [ -n "$glx" ] && export LD_LIBRARY_PATH=$(dirname "$glx")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  [ -n "$eglv" ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$eglv
  if ! .devrun/batchnorm info >> "$log" 2>&1; then
    VK_LOADER_DEBUG=error,warn,driver .devrun/batchnorm info 2>&1 | head -40 >> "$log"
    export WGPU_BACKEND=gl
    echo "vulkan failed; trying gl" | tee -a "$log"
  fi
fi
if ! .devrun/batchnorm info 2>&1 | tee -a "$log"; then
  echo "no adapter; torch alone" | tee -a "$log"
  timeout 100 python3 .devrun/torch_bn_cuda.py > "$out/torch.csv" 2>>"$log"
  exit 1
fi
S=${SHAPES:-8x64x56x56 32x64x56x56 64x256x14x14 16x2048x7x7 1024x4096 64x256x56x56}
step() { local name=$1 t=$2; shift 2; local s=$SECONDS; timeout "$t" "$@"; local rc=$?; echo "== $name rc=$rc ${SECONDS}s total, step $((SECONDS - s))s" | tee -a "$log" >&3; }
# One process per shape, then all shapes in one process (does what ran before change a time?).
for sh in $S; do
  step "bench $sh" 30 .devrun/batchnorm bench --format csv --iters 50 --shape "$sh" >> "$out/bench-each.csv" 2>>"$log"
done
command -v nvidia-smi >/dev/null && step torch 40 python3 .devrun/torch_bn_cuda.py > "$out/torch.csv" 2>>"$log"
step "bench all" 60 .devrun/batchnorm bench --format csv --iters 50 --shape "$(echo $S | tr ' ' ,)" > "$out/bench-all.csv" 2>>"$log"
