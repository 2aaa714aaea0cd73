#!/usr/bin/env bash
# The installed C++ package (issue 6): build the C++ library alone, install
# it into a temporary prefix, build examples/cpp_app against that prefix with
# find_package(dotattn CONFIG), run it and check what it prints against
# values computed by hand. Uses the cmake and ninja on PATH (.ci/run's venv
# has them from pip). CMAKE_BUILD_PARALLEL_LEVEL sets the build jobs (2).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=.ci/common.sh
. .ci/common.sh
require_cmake_and_ninja
jobs="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
prefix="$work/prefix"

echo "== build and install the C++ library into $prefix"
run cmake -S . -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDOTATTN_BUILD_PYTHON=OFF
run cmake --build "$work/build" -j "$jobs"
run cmake --install "$work/build" --prefix "$prefix"
(cd "$prefix" && find . -type f | sort)

# GNUInstallDirs picks lib or lib64 by platform.
config_dir=$(find "$prefix" -path '*/cmake/dotattn' -type d)
for file in dotattnConfig.cmake dotattnConfigVersion.cmake dotattnTargets.cmake; do
  test -f "$config_dir/$file" || { echo "missing: $config_dir/$file" >&2; exit 1; }
done
test -f "$(dirname "$(dirname "$config_dir")")/libdotattn.a" || { echo "missing: libdotattn.a" >&2; exit 1; }
# The public headers, the generated version.hpp, and nothing else (no
# private headers from cpp/src).
expected_headers=$( (cd cpp/include/dotattn && ls -- *.hpp; echo version.hpp) | sort -u)
installed_headers=$( (cd "$prefix/include/dotattn" && ls) | sort)
if [ "$expected_headers" != "$installed_headers" ]; then
  echo "installed headers differ: expected" $expected_headers "got" $installed_headers >&2
  exit 1
fi

echo "== build examples/cpp_app against the installed package"
run cmake -S examples/cpp_app -B "$work/app" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$prefix"
# It must have found the installed copy, not some other dotattn.
found=$(sed -n 's/^dotattn_DIR:PATH=//p' "$work/app/CMakeCache.txt")
echo "dotattn_DIR=$found"
[ "$found" -ef "$config_dir" ] || { echo "cpp_app found dotattn in $found, not $config_dir" >&2; exit 1; }
run cmake --build "$work/app" -j "$jobs"
echo "+ $work/app/cpp_app"
"$work/app/cpp_app" | tee "$work/app.txt"

echo "== check the output"
version=$(sed -n 's/^project(dotattn VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
head -n 1 "$work/app.txt" | grep -E "^dotattn $version, kernels: (avx512|avx2|scalar)$" >/dev/null || {
  echo "first line should be 'dotattn $version, kernels: <isa>'" >&2
  exit 1
}
# Causal, scale 1 (main.cpp): the weights of row i are the softmax of its dot
# products with keys 0..i, e = 2.718282:
#   row 0: key 0 only                      1
#   row 1: scores 0, 1                     1/(1+e) = 0.268941, e/(1+e) = 0.731059
#   row 2: scores 0, 0, 0                  1/3 each
#   row 3: scores 2, 1, 0, 3               e², e, 1, e³ over their sum 31.192875:
#                                          0.236883, 0.087144, 0.032059, 0.643914
# The values of keys 0..2 are unit vectors and key 3's is all ones, so result
# column c is weight c + weight 3; in row 3 that is e²/(1+e²) = 0.880797,
# e/(1+e) = 0.731059 and (1-e+e²)/(1+e²) = 0.675973. Quantised to int8 with
# one scale per token, each key and value row is 127 * (1/127) = 1 to within
# 1e-7, so decoding token 3 over that cache prints row 3 once more.
cat > "$work/expected.txt" <<'EXPECTED'
attention weights (L x S):
  row 0: 1.0000 0.0000 0.0000 0.0000
  row 1: 0.2689 0.7311 0.0000 0.0000
  row 2: 0.3333 0.3333 0.3333 0.0000
  row 3: 0.2369 0.0871 0.0321 0.6439
result (L x Ev):
  row 0: 1.0000 0.0000 0.0000
  row 1: 0.2689 0.7311 0.0000
  row 2: 0.3333 0.3333 0.3333
  row 3: 0.8808 0.7311 0.6760
token 3 decoded over the int8 KV cache (1 x Ev):
  row 0: 0.8808 0.7311 0.6760
EXPECTED
tail -n +2 "$work/app.txt" | diff -u "$work/expected.txt" -
echo "cpp_app output matches the hand-computed values"

# The wheel must carry the Python package only: scikit-build-core runs
# `cmake --install` into it, and DOTATTN_INSTALL is off there. Checked on the
# dotattn installed in this Python, if any (.ci/run's venv has it from the
# test command, built from this tree).
echo "== check that the installed wheel has no C++ package files"
python="${PYTHON:-python3}"
if "$python" -c 'import importlib.metadata as m; m.distribution("dotattn")' 2>/dev/null; then
  "$python" - <<'PY'
import importlib.metadata as metadata

dist = metadata.distribution("dotattn")
files = [str(f) for f in dist.files or []]
# What the C++ package installs: headers, libdotattn.a, lib/cmake/dotattn.
stray = [f for f in files if f.endswith((".hpp", ".a")) or "cmake/dotattn" in f]
print(f"dotattn {dist.version} at {dist.locate_file('')}: {len(files)} files")
if stray:
    raise SystemExit(f"C++ package files in the wheel: {stray}")
PY
else
  echo "(no dotattn installed in $python: skipped)"
fi
