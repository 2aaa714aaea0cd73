#!/usr/bin/env bash
# Issue 5: the C++ core under AddressSanitizer and UndefinedBehaviorSanitizer.
#
#  1. Builds the core, the C++ unit tests (cpp/tests) and the Python module
#     dotattn._core in one build tree with -DDOTATTN_SANITIZE=address,undefined,
#     at -O1 -g (without NDEBUG, so assertions would be live): on 2 cores
#     the build takes about a minute less than at -O2 and the tests about
#     20 s more.
#  2. Runs the C++ tests with ctest, LeakSanitizer included: any report
#     fails the run (abort_on_error, and -fno-sanitize-recover=undefined).
#  3. Runs the Python test suite against the sanitized module: a copy of
#     python/dotattn with that _core beside it, first on PYTHONPATH, and the
#     sanitizer runtimes preloaded into CPython, which is not built with them.
#     Leak checks are off there: CPython keeps memory to the end on purpose.
#     Deselected: the two tests that measure memory use (ASan's allocator,
#     which holds freed memory back to catch use-after-free, and its shadow
#     memory make them meaningless; the L = S = 32768 one also takes a
#     minute under ASan). Hypothesis runs 100 examples per property instead
#     of 400 (SANITIZE_EXAMPLES). Tests that need PyTorch or matplotlib skip
#     themselves when those are not installed.
#
# Usage: bash .ci/sanitize.sh [pytest arguments], from anywhere in the
# repository; the arguments go on pytest's command line. Needs cmake, ninja
# and g++ on PATH (.ci/run's venv has cmake and ninja from pip) and a Python
# whose pip may install ($PYTHON, default python3: a venv's), which gets
# pybind11 and the test requirements. SANITIZE_PYTHON=0 skips step 3;
# SANITIZE_EXAMPLES sets the Hypothesis examples; KEEP_TMP=1 keeps the work
# directory; CMAKE_BUILD_PARALLEL_LEVEL sets the build jobs (2). About 3 to
# 4 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS=0

step() { printf '\n=== %s (%ds)\n' "$*" "$SECONDS"; }
# shellcheck source=.ci/common.sh
. .ci/common.sh
require_cmake_and_ninja
cxx="${CXX:-g++}"
python="${PYTHON:-python3}"
jobs="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
with_python="${SANITIZE_PYTHON:-1}"

tmp=$(mktemp -d -t dotattn-sanitize.XXXXXX)
if [ "${KEEP_TMP:-0}" = 1 ]; then
  echo "work directory (kept): $tmp"
else
  trap 'rm -rf "$tmp"' EXIT
fi
build="$tmp/build"

step "Tools"
"$cxx" --version | head -n 1
cmake --version | head -n 1
echo "ninja $(ninja --version)"
python_options=(-DDOTATTN_BUILD_PYTHON=OFF)
if [ "$with_python" = 1 ]; then
  "$python" --version
  run "$python" -m pip install -q "pybind11>=2.12" "numpy>=1.23" "pytest>=7" "hypothesis>=6.80"
  python_options=(-DDOTATTN_BUILD_PYTHON=ON "-Dpybind11_DIR=$("$python" -m pybind11 --cmakedir)"
                  "-DPython_EXECUTABLE=$(command -v "$python")")
fi

step "Configure and build the C++ tests with -fsanitize=address,undefined"
run cmake -S . -B "$build" -G Ninja -DCMAKE_CXX_COMPILER="$cxx" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g" \
  -DDOTATTN_SANITIZE=address,undefined -DDOTATTN_BUILD_TESTS=ON -DDOTATTN_INSTALL=OFF \
  "${python_options[@]}"
run cmake --build "$build" -j "$jobs" --target dotattn_tests

step "C++ tests (ctest), with leak detection"
start=$SECONDS
(
  cd "$build"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    run ctest --output-on-failure -j "$jobs"
)
echo "C++ tests: $((SECONDS - start)) s"

if [ "$with_python" != 1 ]; then
  step "Done (SANITIZE_PYTHON=0: the Python tests were not run)"
  exit 0
fi

step "Build the Python module with the same flags"
run cmake --build "$build" -j "$jobs" --target _core

# The package as an installed wheel would lay it out, metadata included
# (tests/test_config.py compares dotattn.__version__ with
# importlib.metadata.version("dotattn"); the version is CMakeLists.txt's,
# as scikit-build-core reads it).
pkg="$tmp/python"
mkdir -p "$pkg"
cp -r python/dotattn "$pkg/"
rm -rf "$pkg/dotattn/__pycache__" "$pkg"/dotattn/_core*.so
cp "$build"/_core*.so "$pkg/dotattn/"
version=$(sed -n 's/^project(dotattn VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
mkdir "$pkg/dotattn-$version.dist-info"
printf 'Metadata-Version: 2.1\nName: dotattn\nVersion: %s\n' "$version" \
  >"$pkg/dotattn-$version.dist-info/METADATA"
# A pytest plugin (-p) that registers the Hypothesis profile tests/conftest.py
# loads by the name in HYPOTHESIS_PROFILE; it is imported before conftest.py.
cat >"$pkg/dotattn_sanitize_profile.py" <<EOF
from hypothesis import HealthCheck, settings

settings.register_profile(
    "sanitize",
    max_examples=${SANITIZE_EXAMPLES:-100},
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
EOF

preload=""
for runtime in libasan.so libubsan.so; do
  path=$("$cxx" -print-file-name="$runtime")
  if [ ! -e "$path" ]; then
    echo "$cxx has no $runtime" >&2
    exit 1
  fi
  preload="$preload${preload:+ }$path"
done

step "Python tests against the sanitized module"
start=$SECONDS
export PYTHONPATH="$pkg${PYTHONPATH:+:$PYTHONPATH}" HYPOTHESIS_PROFILE=sanitize
# abort_on_error: the abort makes pytest's faulthandler print the Python
# stack, which names the test. --capture=sys: pytest captures Python's
# sys.stdout and sys.stderr only, so a sanitizer's report, written to file
# descriptor 2 just before the process dies, reaches the log.
# allocator_may_return_null: a malloc too large for memory returns NULL, as
# NumPy expects for its MemoryError, where ASan would stop the process.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:allocator_may_return_null=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
echo "LD_PRELOAD=\"$preload\" ASAN_OPTIONS=$ASAN_OPTIONS UBSAN_OPTIONS=$UBSAN_OPTIONS"
LD_PRELOAD="$preload" "$python" - "$pkg" <<'EOF'
import sys

import dotattn
import dotattn._core

assert dotattn._core.__file__.startswith(sys.argv[1]), dotattn._core.__file__
print(f"dotattn {dotattn.__version__} from {dotattn._core.__file__}")
EOF
LD_PRELOAD="$preload" run "$python" -m pytest tests -q -x -p no:cacheprovider --capture=sys \
  -p dotattn_sanitize_profile \
  --deselect tests/test_decode.py::test_long_causal_call_needs_little_memory \
  --deselect tests/test_reliability.py::test_memory_stays_flat_over_10000_calls "$@"
echo "Python tests: $((SECONDS - start)) s"

step "Done: no sanitizer reports"
