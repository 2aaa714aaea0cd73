"""The Python examples in examples/ run to the end (skipped where the tests
run outside the source tree, as .ci/wheel.sh runs them)."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DECODE_LOOP = ROOT / "examples" / "decode_loop.py"
DISTRIBUTED = ROOT / "examples" / "distributed_attention.py"


@pytest.mark.skipif(
    not DECODE_LOOP.exists(), reason="examples/ is not beside tests/ (tests run outside the tree)"
)
@pytest.mark.parametrize("kv", ["int8", "float16"])
def test_decode_loop_runs_and_checks(kv):
    # --check is on by default: every attention call is compared with the
    # reference inside the example, which exits non-zero on a mismatch.
    command = [sys.executable, str(DECODE_LOOP), "--tokens", "8", "--layers", "2", "--kv", kv]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"exit code {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "tokens/s" in result.stdout, result.stdout
    assert "max relative error" in result.stdout, result.stdout


@pytest.mark.skipif(
    not DISTRIBUTED.exists(), reason="examples/ is not beside tests/ (tests run outside the tree)"
)
def test_distributed_example_runs_and_checks():
    # The example compares each sharded result with one process and exits
    # non-zero past float32's tolerance.
    pytest.importorskip("torch", reason="examples/distributed_attention.py needs PyTorch")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(DISTRIBUTED),
        "--small",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"exit code {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.stdout.count("max error against single process") == 2, result.stdout
