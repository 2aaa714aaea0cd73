#!/usr/bin/env bash
# The AVX-512 kernels on any x86-64 with AVX2: the test-only kernel set
# avx512_emulated (README.md, "Kernel sets"), the avx512 kernels compiled
# once more through SIMDe with AVX2 flags only (-DDOTATTN_EMULATED_AVX512=ON).
#
#  1. Installs SIMDe's headers into the Python environment (cmeel-simde,
#     where CMake finds them) and builds the C++ tests and the Python module
#     in one build tree of its own with the option on.
#  2. Checks the emulated object: no zmm or mask register (an intrinsic
#     SIMDe lacks is GCC's own, real AVX-512, which GCC refuses in a file
#     without AVX-512 flags, but a SIMDe path or a flag might let one
#     through) and no symbol in common with avx512.cpp's (its vector type
#     is another type: kernels/avx512_emulated.cpp).
#  3. Runs the C++ tests with DOTATTN_ISA=avx512_emulated (the tests that
#     loop over the kernel sets run the others too).
#  4. Runs the whole Python suite against that module (a copy of
#     python/dotattn with it, first on PYTHONPATH, as .ci/sanitize.sh does)
#     with DOTATTN_ISA=avx512_emulated and the per-set tests on that set only
#     (DOTATTN_TEST_ISAS). Where the CPU has AVX-512 too, tests/test_isa.py
#     checks that both sets give the same bits. The emulated kernels run
#     about 10x slower than avx2, but the suite on one set is small: about a
#     minute on one core.
#
# Usage: bash .ci/emulated_avx512.sh [pytest arguments]. Needs cmake, ninja,
# g++ and binutils (objdump, nm), and a Python whose pip may install
# ($PYTHON, default python3: a venv's). The normal installed dotattn, if
# any, is left alone. KEEP_TMP=1 keeps the work directory;
# CMAKE_BUILD_PARALLEL_LEVEL sets the build jobs (2). About 3 minutes on
# one core of a busy machine (the build 1.5 to 2, the Python tests 1.1).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS=0

step() { printf '\n=== %s (%ds)\n' "$*" "$SECONDS"; }
# shellcheck source=.ci/common.sh
. .ci/common.sh
require_cmake_and_ninja
python="${PYTHON:-python3}"
jobs="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"

# The emulated kernels need what avx2 needs (kernels/dispatch.cpp).
for flag in avx2 fma f16c; do
  if ! grep -qw "$flag" /proc/cpuinfo; then
    echo "this CPU lacks $flag: avx512_emulated cannot run here, not tested"
    exit 0
  fi
done

tmp=$(mktemp -d -t dotattn-emulated.XXXXXX)
if [ "${KEEP_TMP:-0}" = 1 ]; then
  echo "work directory (kept): $tmp"
else
  trap 'rm -rf "$tmp"' EXIT
fi
build="$tmp/build"

step "Tools and SIMDe"
"$python" --version
run "$python" -m pip install -q "cmeel-simde==0.8.2" "pybind11>=2.12" "numpy>=1.23" "pytest>=7" \
  "hypothesis>=6.80" "ml_dtypes>=0.3"

step "Configure and build with -DDOTATTN_EMULATED_AVX512=ON"
run cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDOTATTN_EMULATED_AVX512=ON \
  -DDOTATTN_BUILD_TESTS=ON -DDOTATTN_BUILD_PYTHON=ON -DDOTATTN_INSTALL=OFF \
  "-Dpybind11_DIR=$("$python" -m pybind11 --cmakedir)" "-DPython_EXECUTABLE=$(command -v "$python")"
run cmake --build "$build" -j "$jobs" --target dotattn_tests _core

step "The emulated object: no AVX-512 register, no symbol shared with avx512.cpp's"
objects="$build/cpp/CMakeFiles/dotattn.dir/src/kernels"
emulated="$objects/avx512_emulated.cpp.o"
avx512_registers='zmm|%k[0-7]\b'  # the 512-bit and the mask registers
zmm=$(objdump -d --no-show-raw-insn "$emulated" | grep -cE "$avx512_registers" || true)
if [ "$zmm" != 0 ]; then
  echo "$emulated has $zmm instructions on zmm or mask registers (real AVX-512), e.g.:" >&2
  objdump -d --no-show-raw-insn "$emulated" | grep -m 5 -E "$avx512_registers" >&2
  exit 1
fi
defined() { nm --defined-only --extern-only "$1" | awk '{print $3}' | sort -u; }
shared=$(comm -12 <(defined "$objects/avx512.cpp.o") <(defined "$emulated"))
if [ -n "$shared" ]; then
  echo "avx512.cpp.o and avx512_emulated.cpp.o define the same symbols:" >&2
  echo "$shared" | c++filt >&2
  exit 1
fi
echo "no instruction on zmm or mask registers in avx512_emulated.cpp.o; $(defined "$emulated" | wc -l) external symbols, none of avx512.cpp.o's"

step "C++ tests (ctest) with DOTATTN_ISA=avx512_emulated"
(cd "$build" && export DOTATTN_ISA=avx512_emulated && run ctest --output-on-failure -j "$jobs")

step "Python tests on avx512_emulated"
pkg="$tmp/python"
mkdir -p "$pkg"
cp -r python/dotattn "$pkg/"
rm -rf "$pkg/dotattn/__pycache__" "$pkg"/dotattn/_core*.so
cp "$build"/_core*.so "$pkg/dotattn/"
version=$(sed -n 's/^project(dotattn VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
mkdir "$pkg/dotattn-$version.dist-info"
printf 'Metadata-Version: 2.1\nName: dotattn\nVersion: %s\n' "$version" \
  >"$pkg/dotattn-$version.dist-info/METADATA"
export PYTHONPATH="$pkg${PYTHONPATH:+:$PYTHONPATH}" DOTATTN_ISA=avx512_emulated \
  DOTATTN_TEST_ISAS=avx512_emulated
"$python" - "$pkg" <<'EOF'
import sys

import dotattn
import dotattn._core

assert dotattn._core.__file__.startswith(sys.argv[1]), dotattn._core.__file__
assert dotattn.get_isa() == "avx512_emulated", dotattn.get_isa()
print(f"dotattn {dotattn.__version__} from {dotattn._core.__file__}: {dotattn.supported_isas()}")
EOF
start=$SECONDS
run "$python" -m pytest tests -q -p no:cacheprovider "$@"
echo "Python tests: $((SECONDS - start)) s"

step "Done"
