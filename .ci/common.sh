# Sourced by the .ci scripts that build with CMake.

# Echoes a command, then runs it.
run() {
  echo "+ $*"
  "$@"
}

# Exits unless cmake and ninja are on PATH (.ci/run's venv has them from pip).
require_cmake_and_ninja() {
  local tool
  for tool in cmake ninja; do
    if ! command -v "$tool" >/dev/null; then
      echo "$tool not found (pip install cmake ninja)" >&2
      exit 1
    fi
  done
}
