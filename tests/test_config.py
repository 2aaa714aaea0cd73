"""show_config(), the version, and the `python -m dotattn` entry point."""

import importlib.metadata
import os
import subprocess
import sys

import dotattn
import dotattn.__main__ as dotattn_main

KEYS = {
    "version",
    "compiler",
    "build_type",
    "build_flags",
    "openmp",
    "cpu",
    "cpu_features",
    "isa",
    "supported_isas",
    "num_threads",
    "numpy",
}


def test_show_config_dicts():
    info = dotattn.show_config(mode="dicts")
    assert set(info) == KEYS
    assert info["version"] == dotattn.__version__
    assert info["isa"] == dotattn.get_isa() and info["isa"] in info["supported_isas"]
    assert info["supported_isas"] == dotattn.supported_isas()
    assert info["num_threads"] == dotattn.get_num_threads()
    assert "sse2" in info["cpu_features"]
    assert "-march=native" not in info["build_flags"]


def test_show_config_prints(capsys):
    assert dotattn.show_config() is None
    printed = capsys.readouterr().out
    assert f"version: {dotattn.__version__}" in printed and f"isa: {dotattn.get_isa()}" in printed


def test_one_version_everywhere():
    assert dotattn.__version__ == importlib.metadata.version("dotattn")


def test_public_names():
    assert sorted(dotattn.__all__) == sorted(
        [
            "QuantizedKV",
            "__version__",
            "attention",
            "attention_paged",
            "attention_varlen",
            "attention_weights",
            "get_isa",
            "get_num_threads",
            "merge",
            "quantize_kv",
            "reference",
            "set_isa",
            "set_num_threads",
            "show_config",
            "supported_isas",
        ]
    )


def test_command_line_entry_point():
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    result = subprocess.run(
        [sys.executable, "-m", "dotattn", "--repeat", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed" in result.stdout
    # Each check shape in each dtype with a bound: float32, float64, float16,
    # and bfloat16 where ml_dtypes is installed.
    checks = len(dotattn_main.CHECKS) * len(dotattn.reference.TOLERANCES)
    assert result.stdout.count(" yes") == checks and " NO" not in result.stdout
    for name in ("prefill", "causal", "decode", "tiny"):
        assert name in result.stdout
