#!/usr/bin/env bash
# Fetch, on a machine with PyPI access, what benchmarks/gpu_run.sh installs on a bare GPU machine
# that cannot reach PyPI: the wheels of benchmarks/gpu_requirements.txt for that machine's Python,
# into DEST (default ./wheels, git-ignored), to be copied or carried there with the tree.
#
#   bash benchmarks/gpu_wheels.sh [DEST]      (PY: the GPU machine's Python, default 3.12)
#
# Ray's wheel (76 MB) is unpacked and repacked as ray-<version>-stripped.tar.xz (about 25 MB)
# without what radcloud never loads (its Java jars, RLlib, Ray LLM and the dashboard's web
# client: serving starts Ray with the dashboard off) and with its binaries stripped. gpu_run.sh unpacks *.tar.xz next to the
# wheels it installs. The whole folder is about 55 MB, inside the device tool's 64 MiB carry
# limit with the tree.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-wheels}
py=${PY:-3.12}
mkdir -p "$dest"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
    manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --implementation cp --python-version "$py" "${platforms[@]}" -d "$dest" \
    -r benchmarks/gpu_requirements.txt

for wheel in "$dest"/ray-*.whl; do
    [ -e "$wheel" ] || continue
    version=$(basename "$wheel" | cut -d- -f2)
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    # Unzipped keeping the files' modes (Ray's gcs_server and raylet are programs it starts).
    python3 - "$wheel" "$scratch" <<'EOF'
import os
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as wheel:
    for info in wheel.infolist():
        path = wheel.extract(info, sys.argv[2])
        if mode := (info.external_attr >> 16) & 0o7777:
            os.chmod(path, mode)
EOF
    rm -rf "$scratch/ray/jars" "$scratch/ray/rllib" "$scratch/ray/llm" \
        "$scratch/ray/dashboard/client/build"
    # Ray's binaries carry their symbol tables (about half their size): strip those.
    find "$scratch/ray" -type f \( -name '*.so' -o -perm -u+x \) -print0 |
        while IFS= read -r -d '' file; do
            if [ "$(head -c 4 "$file" | od -An -c | tr -d ' ')" = '177ELF' ]; then
                strip --strip-unneeded "$file"
            fi
        done
    tar -C "$scratch" -cf - ray "ray-$version.dist-info" | xz -T0 -9 >"$dest/ray-$version-stripped.tar.xz"
    rm -f "$wheel"
done
du -sh "$dest"
