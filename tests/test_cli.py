"""`python -m dotattn bench` (python/dotattn/_bench.py) on the tiny shape
and small sizes, in-process through main(argv), so that each test takes
about a second; the one with PyTorch, run only where PyTorch is installed,
takes a few. The command without a subcommand is tested in test_config.py."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import dotattn
import pytest
from dotattn import _bench
from dotattn.__main__ import main

QUICK = ["bench", "--shapes", "tiny", "--sgemm-size", "128"]


@pytest.fixture
def no_pauses(monkeypatch):
    """The pauses between runs are for stable timings, not for correctness."""
    monkeypatch.setattr(_bench, "OPENBLAS_PAUSE_S", 0.0)
    monkeypatch.setattr(_bench, "PAUSE_S", dict.fromkeys(_bench.PAUSE_S, 0.0))


def read_json(path) -> dict:
    with open(path) as file:
        return json.load(file)


def test_standard_shapes():
    shapes = _bench.STANDARD_SHAPES
    assert list(shapes) == ["prefill", "causal", "long", "decode", "decode_b8", "decode_long", "tiny"]
    assert shapes["prefill"].flops == 4 * 16 * 1024 * 1024 * 64
    assert shapes["causal"].flops == 4 * 32 * 2048 * 2048 * 128 / 2
    assert shapes["decode"].is_decode and shapes["decode_long"].is_decode
    assert not shapes["tiny"].is_decode


def test_bench_json(tmp_path, capsys, no_pauses):
    path = tmp_path / "bench.json"
    assert main([*QUICK, "--repeat", "2", "--json", str(path), "--no-torch"]) == 0
    printed = capsys.readouterr().out
    assert "| tiny " in printed and "numpy sgemm 128" in printed

    report = read_json(path)
    for key in ("machine", "threads", "isa", "supported_isas", "dotattn", "numpy", "sgemm", "shapes"):
        assert key in report, key
    assert report["machine"]["cpu"] and report["machine"]["cores"] >= 1
    assert report["threads"] == dotattn.get_num_threads()
    assert report["isa"] == dotattn.get_isa() and report["isa"] in report["supported_isas"]
    assert report["torch"] is None and report["sweep"] is None
    assert report["sgemm"]["n"] == 128 and report["sgemm"]["gflops"] > 0

    [tiny] = report["shapes"]
    dims = {key: tiny[key] for key in ("B", "Hq", "Hkv", "L", "S", "E", "Ev")}
    assert tiny["name"] == "tiny" and dims == {"B": 1, "Hq": 1, "Hkv": 1, "L": 16, "S": 16, "E": 64, "Ev": 64}
    assert tiny["flops"] == 4 * 16 * 16 * 64
    assert "skipped" in tiny["systems"]["torch"]
    for system in ("dotattn", "numpy_ref"):
        timing = tiny["systems"][system]
        assert len(timing["samples_s"]) == 2 and min(timing["samples_s"]) > 0
        assert timing["median_s"] > 0 and timing["gflops"] > 0 and timing["calls_per_run"] >= 1
        assert timing["kv_gbps"] is None  # not a decode shape


def test_bench_decode_int8_cold(tmp_path, capsys, monkeypatch, no_pauses):
    monkeypatch.setattr(_bench, "REFERENCE_LIMIT_S", 0.0)  # the reference would take a second on decode
    path = tmp_path / "bench.json"
    options = ["--shapes", "tiny", "decode", "--kv-dtype", "int8", "--cold", "--repeat", "1", "--no-torch"]
    small = ["--flush-mib", "4", "--stream-mib", "4", "--sgemm-size", "128", "--json", str(path)]
    assert main(["bench", *options, *small]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("stream_read 4 MiB: ") and "GB/s" in line for line in lines)
    [header, decode_row] = [cells(line) for line in lines if line.startswith(("| shape ", "| decode "))]
    gbps, percent = (decode_row[header.index(column)] for column in ("K+V GB/s", "% stream"))
    assert float(gbps) > 0 and percent.endswith("%") and float(percent[:-1]) >= 0

    report = read_json(path)
    assert report["kv_dtype"] == "int8" and report["cold"] is True and report["stream"]["gbps"] > 0
    tiny, decode = report["shapes"]
    ours = decode["systems"]["dotattn"]
    int8_bytes = 2 * 8 * 4096 * (128 + 128 // 32 * 4)  # K and V: data and a float32 scale per 32
    assert decode["kv_dtype"] == "int8" and decode["kv_bytes"] == ours["kv_bytes"] == int8_bytes
    assert ours["calls_per_run"] == 1  # cold calls are timed one by one
    assert ours["stream_percent"] == pytest.approx(100 * ours["kv_gbps"] / report["stream"]["gbps"])
    assert tiny["systems"]["dotattn"]["kv_gbps"] is None


def cells(row: str) -> list[str]:
    """The cells of a row of the bench's Markdown table."""
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def test_bench_sets_and_restores_isa_and_threads(tmp_path, no_pauses, restore_threads):
    isa, threads = dotattn.get_isa(), dotattn.get_num_threads()
    path = tmp_path / "bench.json"
    options = ["--repeat", "1", "--no-torch", "--isa", "scalar", "--threads", "1", "--json", str(path)]
    assert main([*QUICK, *options]) == 0
    report = read_json(path)
    assert report["isa"] == "scalar" and report["threads"] == 1
    assert dotattn.get_isa() == isa and dotattn.get_num_threads() == threads


@pytest.mark.parametrize(
    "options",
    [
        ["--shapes", "nonsense"],
        ["--isa", "nonsense"],
        ["--threads", "0"],
        ["--repeat", "0"],
        ["--sweep", "0"],
        ["--sgemm-size", "0"],
    ],
)
def test_bench_rejects_bad_options(options, capsys):
    isa = dotattn.get_isa()
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--no-torch", *options])
    assert exit_info.value.code == 2
    assert options[0] in capsys.readouterr().err
    assert dotattn.get_isa() == isa


def test_bench_plot_without_matplotlib(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(SystemExit) as exit_info:
        main([*QUICK, "--no-torch", "--plot", str(tmp_path / "bench.png")])
    assert exit_info.value.code == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "bench.png").exists()


def test_bench_plot(tmp_path, no_pauses):
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (the bench extra)")
    png, path = tmp_path / "bench.png", tmp_path / "bench.json"
    options = ["--repeat", "1", "--no-torch", "--sweep", "16", "32", "--plot", str(png), "--json", str(path)]
    assert main([*QUICK, *options]) == 0
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    sweep = read_json(path)["sweep"]
    assert [r["name"] for r in sweep] == ["L=16", "L=32", "L=16 causal", "L=32 causal"]
    assert [(r["L"], r["causal"]) for r in sweep] == [(16, False), (32, False), (16, True), (32, True)]
    assert all(r["S"] == r["L"] and (r["Hq"], r["E"]) == (16, 64) for r in sweep)
    assert all(r["systems"]["dotattn"]["gflops"] > 0 for r in sweep)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch is not installed")
def test_bench_with_torch(tmp_path):
    # In a child process: importing torch here would load its OpenMP runtime into the test process.
    path = tmp_path / "bench.json"
    options = ["--repeat", "2", "--threads", "2", "--json", str(path)]
    command = [sys.executable, "-m", "dotattn", *QUICK, *options]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    report = read_json(path)
    assert report["torch"] and report["threads"] == 2
    timing = report["shapes"][0]["systems"]["torch"]
    assert len(timing["samples_s"]) == 2 and timing["median_s"] > 0


def test_bench_kernels(capsys, monkeypatch, no_pauses):
    """--kernels: a line per kernel set and tile width, then the whole calls
    on each set, with the figures in range."""
    from dotattn import _bench_kernels

    small = [_bench.Shape("small", 1, 2, 2, 40, 40, 16), _bench.Shape("small_decode", 1, 4, 2, 1, 300, 32)]
    monkeypatch.setattr(_bench_kernels, "WHOLE_CALLS", small)
    monkeypatch.setattr(_bench_kernels, "TILE_SECONDS", 0.005)
    options = ["--kernels", "--repeat", "1", "--flush-mib", "4", "--stream-mib", "4", "--sgemm-size", "64"]
    assert main(["bench", *options, "--no-torch"]) == 0
    lines = capsys.readouterr().out.splitlines()
    isas = [isa for isa in dotattn.supported_isas() if isa != "avx512_emulated"]
    tiles = [line.split() for line in lines if line.split()[:1] and line.split()[0] in isas]
    assert [(row[0], row[1]) for row in tiles[: 2 * len(isas)]] == [
        (i, e) for i in isas for e in ("64", "128")
    ]
    for row in tiles[: 2 * len(isas)]:
        peak, score, pv, softmax = float(row[2]), float(row[3]), float(row[5]), float(row[7])
        assert min(peak, score, pv, softmax) > 0
    calls = tiles[2 * len(isas) :]
    assert [(row[0], row[1]) for row in calls] == [(i, s.name) for s in small for i in isas]
    for row in calls:
        assert float(row[2]) > 0 and row[-1].endswith("%")


def test_tune(capsys, monkeypatch):
    """tune sweeps the parameters asked for on small shapes, prints a table
    ready to paste, and leaves the kernel set's table as it found it."""
    from dotattn import _tune

    monkeypatch.setattr(_tune, "PREFILL", [(_bench.Shape("p", 1, 2, 2, 40, 60, 16), "float32")])
    monkeypatch.setattr(_tune, "DECODE", [(_bench.Shape("d", 1, 4, 2, 1, 600, 32), "int8")])
    isa = dotattn.get_isa()
    before = dotattn._core.get_tuning(isa)
    options = ["--only", "row_block", "value_chunk_bytes", "--rounds", "1", "--flush-mib", "4"]
    assert main(["tune", *options]) == 0
    out = capsys.readouterr().out
    assert "row_block (prefill)" in out and "value_chunk_bytes (decode, cold)" in out
    assert "key_bytes_ahead" not in out
    [best] = [line for line in out.splitlines() if line.startswith(f"best table for {isa}: ")]
    assert best.split(": ", 1)[1].startswith("static constexpr Tuning kTuning{") and best.endswith("};")
    assert "gain over the current table, prefill" in out and "gain over the current table, decode" in out
    assert dotattn._core.get_tuning(isa) == before and dotattn.get_isa() == isa


@pytest.mark.parametrize("options", [["--isa", "nonsense"], ["--rounds", "0"], ["--only", "nonsense"]])
def test_tune_rejects_bad_options(options, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", *options])
    assert exit_info.value.code == 2
    assert options[0] in capsys.readouterr().err
