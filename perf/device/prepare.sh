#!/usr/bin/env bash
# Run here, from the project's root, before a session's calls to a lent GPU machine: that
# machine has no Rust toolchain and no network, so it gets stripped release binaries (the
# CLI and the test suites that run kernels), the Vulkan loader's package and the scripts,
# in the ignored folders .devrun/ and .gl/. Then make one device call as printed at the end.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
for d in /.gl/ /.devrun/; do grep -qxF "$d" "$exclude" 2>/dev/null || echo "$d" >> "$exclude"; done

if ! ls .gl/libvulkan1_*.deb >/dev/null 2>&1; then
  mkdir -p .gl /tmp/amd64/partial
  o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
  apt-get "${o[@]}" update >/dev/null
  (cd .gl && apt-get "${o[@]}" download libvulkan1)
fi

rm -rf .devrun && mkdir -p .devrun/tests
cargo build --release --bin batchnorm
strip -o .devrun/batchnorm target/release/batchnorm
# The test binaries that run kernels (shader_portability and npy_fuzz need no GPU).
cargo test --release --no-run --message-format=json 2>/dev/null |
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        if m["target"]["name"] not in ("shader_portability", "npy_fuzz"):
            print(m["target"]["name"], m["executable"])
' | while read -r name path; do strip -o ".devrun/tests/$name" "$path"; done
tar -C .devrun/tests -cJf .devrun/tests.tar.xz . && rm -r .devrun/tests
cp perf/device/run.sh perf/device/torch_bn_cuda.py .devrun/
pwd > .devrun/built_in
du -sh .devrun .gl
echo 'Now: device run, command "bash .devrun/run.sh", carry [".gl", ".devrun"], timeout_s 420.'
