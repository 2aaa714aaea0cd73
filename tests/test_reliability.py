"""Reliability (issue 5): calls from many Python threads, under a changing
thread count, from thread pools and from inside OpenMP parallel regions;
fork() and the other multiprocessing start methods; memory over many calls,
failing ones included; and what Ctrl-C does during a long call.

Whatever could hang or needs a clean process runs in a fresh interpreter
(run_python) with a time limit, so that a deadlock fails its test instead of
blocking the suite."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import dotattn
import numpy as np
import pytest

# ---------------------------------------------------------------------------
# The work every scenario does. These functions also run in the child
# interpreters: run_python() sends them their source.


def make_cases(seed: int) -> list:
    """Eight calls that differ in dtype, shape, GQA, masks, causality, LSE,
    out= and function, as (name, arrays, keyword arguments)."""
    rng = np.random.default_rng(seed)

    def normal(*shape, dtype=np.float32):
        return rng.standard_normal(shape).astype(dtype)

    f64 = np.float64
    q, k, v = normal(2, 4, 70, 32), normal(2, 2, 90, 32), normal(2, 2, 90, 24)
    q64, k64, v64 = (
        normal(1, 4, 65, 16, dtype=f64),
        normal(1, 4, 80, 16, dtype=f64),
        normal(1, 4, 80, 16, dtype=f64),
    )
    bool_mask = rng.random((1, 1, 33, 120)) < 0.7
    additive = np.where(rng.random((48, 48)) < 0.8, 0.0, -np.inf)
    return [
        ("gqa-causal", (q, k, v), {"is_causal": True}),
        ("f64-lower-right-lse", (q64, k64, v64), {"is_causal": "lower_right", "return_lse": True}),
        (
            "bool-mask",
            (normal(2, 3, 33, 40), normal(2, 3, 120, 40), normal(2, 3, 120, 40)),
            {"attn_mask": bool_mask},
        ),
        (
            "f64-additive-2d",
            (normal(48, 8, dtype=f64), normal(48, 8, dtype=f64), normal(48, 8, dtype=f64)),
            {"attn_mask": additive},
        ),
        ("decode", (normal(3, 8, 1, 64), normal(3, 2, 1500, 64), normal(3, 2, 1500, 64)), {}),
        ("out", (q, k, v), {"out": "fresh", "scale": 0.3}),
        ("weights", (q64, k64), {"is_causal": True}),
        (
            "transposed",
            (normal(2, 50, 4, 32).transpose(0, 2, 1, 3), normal(2, 4, 60, 32), normal(2, 4, 60, 32)),
            {"return_lse": True},
        ),
    ]


def compute(case) -> tuple:
    """The case's results, as a tuple of arrays."""
    name, arrays, kwargs = case
    if name == "weights":
        return (dotattn.attention_weights(*arrays, **kwargs),)
    if kwargs.get("out") == "fresh":
        q, k, v = arrays
        out = np.empty(q.shape[:-1] + v.shape[-1:], q.dtype)
        result = dotattn.attention(*arrays, **{**kwargs, "out": out})
        assert result is out
        return (out,)
    result = dotattn.attention(*arrays, **kwargs)
    return tuple(result) if isinstance(result, tuple) else (result,)


def digest(results) -> str:
    """One hash of the bits of a sequence of result tuples."""
    h = hashlib.sha256()
    for arrays in results:
        for a in arrays:
            h.update(str((a.dtype, a.shape)).encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def rss_bytes() -> int:
    """The process's resident set size now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


HELPERS = "\n\n".join(inspect.getsource(f) for f in (make_cases, compute, digest, rss_bytes))
PREAMBLE = "import hashlib, json, os, sys, threading, time\nimport numpy as np\nimport dotattn\n\n" + HELPERS


def run_python(code: str, *, timeout: float = 60, env: dict | None = None) -> dict:
    """Runs code (after the helpers above) as a script in a fresh interpreter
    with warnings as errors and returns the JSON object it prints last. A
    child still running after `timeout` seconds fails the test; it and
    everything it started (its session) are killed."""
    with tempfile.TemporaryDirectory() as tmp:
        # A file, not -c: multiprocessing's spawn and forkserver re-import it.
        script = os.path.join(tmp, "scenario.py")
        with open(script, "w") as f:
            f.write(PREAMBLE + "\n\n" + textwrap.dedent(code))
        return _run_script(script, timeout, env)


def _run_script(script: str, timeout: float, env: dict | None) -> dict:
    proc = subprocess.Popen(
        [sys.executable, "-W", "error", script],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"no result after {timeout} s (a hang?)\nstdout:\n{stdout}\nstderr:\n{stderr}")
    assert proc.returncode == 0, f"exit status {proc.returncode}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    return json.loads(stdout.strip().splitlines()[-1])


def serial_results(cases) -> list:
    """Each case computed once, one call at a time, on one thread."""
    before = dotattn.get_num_threads()
    dotattn.set_num_threads(1)
    try:
        return [compute(c) for c in cases]
    finally:
        dotattn.set_num_threads(before)


def assert_bitwise_equal(got, want, what="") -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, what
        assert a.tobytes() == b.tobytes(), f"results differ {what}"


def run_threads(n: int, target) -> None:
    """Runs target(i) on n threads started together; re-raises the first
    failure. A thread that does not end within 60 s fails the test."""
    errors = []
    barrier = threading.Barrier(n)

    def body(i):
        try:
            barrier.wait(timeout=30)
            target(i)
        except BaseException as e:  # noqa: B036 - reported below
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive(), "a thread did not finish within 60 s"
    if errors:
        raise errors[0]


# ---------------------------------------------------------------------------
# Concurrency


def test_eight_threads_for_two_seconds_match_serial(restore_threads):
    """8 Python threads, each on its own inputs, call for about 2 s; every
    result is bitwise the serial one."""
    dotattn.set_num_threads(2)
    cases = make_cases(1)
    want = serial_results(cases)
    calls = [0] * 8
    deadline = time.perf_counter() + 2.0

    def worker(i):
        case = cases[i % len(cases)]
        while time.perf_counter() < deadline:
            assert_bitwise_equal(compute(case), want[i % len(cases)], f"in thread {i} ({case[0]})")
            calls[i] += 1

    run_threads(8, worker)
    print(f"8 threads, 2 s: {sum(calls)} calls, per thread {calls}")
    assert min(calls) >= 3, calls


def test_changing_the_thread_count_during_calls(restore_threads):
    """While one thread keeps calling set_num_threads(1..4), four others
    call; nothing crashes and every result is bitwise the serial one."""
    cases = make_cases(2)
    want = serial_results(cases)
    done = threading.Event()
    changes = [0]
    calls = [0] * 4

    def changer():
        n = 0
        while not done.is_set():
            dotattn.set_num_threads(n % 4 + 1)
            n += 1
            time.sleep(0.0002)
        changes[0] = n

    def worker(i):
        deadline = time.perf_counter() + 1.0
        j = i
        while time.perf_counter() < deadline:
            assert_bitwise_equal(compute(cases[j % len(cases)]), want[j % len(cases)], f"in thread {i}")
            calls[i] += 1
            j += 1

    t = threading.Thread(target=changer, daemon=True)
    t.start()
    try:
        run_threads(4, worker)
    finally:
        done.set()
        t.join(timeout=10)
    print(f"{changes[0]} thread-count changes during {sum(calls)} calls from 4 threads ({calls})")
    assert changes[0] >= 100 and min(calls) >= 3, (changes, calls)


def test_calls_from_nested_thread_pools():
    """Callers inside concurrent.futures thread pools (4 workers, each running
    a pool of 2 of its own) neither deadlock nor differ from serial calls."""
    got = run_python(
        """
        from concurrent.futures import ThreadPoolExecutor
        cases = make_cases(3)
        dotattn.set_num_threads(1)
        want = digest(compute(c) for c in cases)
        dotattn.set_num_threads(2)

        def outer(i):
            with ThreadPoolExecutor(max_workers=2) as inner:
                futures = [inner.submit(compute, c) for c in cases]
                return digest(f.result(timeout=30) for f in futures)

        with ThreadPoolExecutor(max_workers=4) as pool:
            digests = [f.result(timeout=30) for f in [pool.submit(outer, i) for i in range(8)]]
        print(json.dumps({"want": want, "got": digests}))
        """,
        timeout=60,
    )
    assert got["got"] == [got["want"]] * 8


# The OpenMP runtime dotattn uses (GNU libgomp, found in the process's memory
# map) or another copy of it, driven through ctypes: GOMP_parallel (the entry
# point GCC compiles `#pragma omp parallel` to) runs a Python callback on each
# of a team's 4 threads, and each calls dotattn from inside the parallel
# region. In the same runtime dotattn's own region is nested in it: with
# OpenMP's default of one active level it runs on the calling thread alone,
# with OMP_MAX_ACTIVE_LEVELS > 1 it starts a nested team. Another runtime
# knows nothing of the outer region: each calling thread starts a full team.
NESTED_OPENMP = """
import ctypes, glob, importlib.util
import dotattn._core

def loaded_libgomp():
    with open("/proc/self/maps") as f:
        paths = {line.split()[-1] for line in f if "libgomp" in line}
    return sorted(paths)[0] if paths else None

def another_libgomp(loaded):
    # A runtime other than dotattn's: the system's (when dotattn's is a wheel's
    # bundled copy) or PyTorch's bundled one, found without importing torch.
    import ctypes.util
    candidates = []
    system = ctypes.util.find_library("gomp")
    if system:
        for d in ("/usr/lib*", "/usr/lib*/*", "/lib*", "/lib*/*"):
            candidates += glob.glob(os.path.join(d, system))
    spec = importlib.util.find_spec("torch")
    if spec and spec.submodule_search_locations:
        for d in spec.submodule_search_locations:
            candidates += glob.glob(os.path.join(d, "lib", "libgomp*.so*"))
    same = os.stat(loaded) if loaded else None
    for c in candidates:
        st = os.stat(c)
        if same is None or (st.st_dev, st.st_ino) != (same.st_dev, same.st_ino):
            return c
    return None

loaded = loaded_libgomp()
path = loaded if RUNTIME == "same" else another_libgomp(loaded)
if path is None:
    which = "libgomp loaded" if RUNTIME == "same" else "libgomp besides dotattn's (system or PyTorch's)"
    print(json.dumps({"skip": f"no {which} to drive"}))
    sys.exit(0)
gomp = ctypes.CDLL(path)
for name in ("omp_get_thread_num", "omp_get_num_threads", "omp_get_level"):
    getattr(gomp, name).restype = ctypes.c_int
FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
gomp.GOMP_parallel.argtypes = [FN, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]

cases = make_cases(4)
dotattn.set_num_threads(1)
want = digest(compute(c) for c in cases)
dotattn.set_num_threads(2)
seen = {}

def body(_):
    try:
        team = (gomp.omp_get_level(), gomp.omp_get_num_threads())
        seen[gomp.omp_get_thread_num()] = (team, digest(compute(c) for c in cases))
    except BaseException as e:  # a callback cannot raise: report it
        seen[-1] = repr(e)

callback = FN(body)
gomp.GOMP_parallel(callback, None, 4, 0)  # ctypes releases the GIL around it
print(json.dumps({"path": path, "want": want, "seen": seen}))
"""


@pytest.mark.parametrize("nesting", ["default", "enabled"])
@pytest.mark.parametrize("runtime", ["same", "another"])
def test_calls_from_inside_an_openmp_parallel_region(runtime, nesting):
    env = {"OMP_MAX_ACTIVE_LEVELS": "3"} if nesting == "enabled" else {}
    got = run_python(f"RUNTIME = {runtime!r}\n" + NESTED_OPENMP, timeout=60, env=env)
    if "skip" in got:
        pytest.skip(got["skip"])
    assert "-1" not in got["seen"], got["seen"]["-1"]
    assert sorted(got["seen"]) == ["0", "1", "2", "3"], got
    for (level, team_size), d in got["seen"].values():
        assert (level, team_size) == (1, 4)
        assert d == got["want"]


@pytest.mark.parametrize("omp_num_threads", ["1", "3", "4,2"])
def test_many_threads_under_omp_num_threads(omp_num_threads):
    """In a process started with OMP_NUM_THREADS set, 8 threads calling at
    once get the bits this process gets."""
    got = run_python(
        """
        cases = make_cases(5)
        results = [None] * 8
        def worker(i):
            results[i] = digest(compute(c) for c in cases[i:] + cases[:i])
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(json.dumps({"threads": dotattn.get_num_threads(), "digests": results}))
        """,
        env={"OMP_NUM_THREADS": omp_num_threads},
        timeout=60,
    )
    assert got["threads"] == int(omp_num_threads.split(",")[0])
    cases = make_cases(5)
    want = serial_results(cases)
    assert got["digests"] == [digest(want[i:] + want[:i]) for i in range(8)]


# ---------------------------------------------------------------------------
# fork() and the multiprocessing start methods

# With PARALLEL_FIRST the parent first makes a call on 2 threads (OpenMP's
# worker threads are then alive); then a pool of 2 children started with
# METHOD computes the cases.
MULTIPROCESSING = """
import multiprocessing, warnings

def child(i):
    cases = make_cases(6)
    return os.getpid(), dotattn.get_num_threads(), digest(compute(c) for c in cases)

if __name__ == "__main__":
    cases = make_cases(6)
    dotattn.set_num_threads(1)  # no OpenMP team yet
    want = digest(compute(c) for c in cases)
    dotattn.set_num_threads(2)
    if PARALLEL_FIRST:
        big = np.random.default_rng(0).standard_normal((1, 8, 512, 64), dtype=np.float32)
        dotattn.attention(big, big, big)  # 8 work items on 2 threads
    context = multiprocessing.get_context(METHOD)
    with warnings.catch_warnings():
        # Python 3.12+ warns that fork() in a process with threads (here
        # OpenMP's idle workers) may deadlock the child: the case tested.
        warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
        with context.Pool(2) as pool:
            got = pool.map_async(child, range(4)).get(timeout=40)
    print(json.dumps({"want": want, "parent": os.getpid(), "children": got}))
"""


@pytest.mark.parametrize(
    "method, parallel_first",
    [("fork", True), ("fork", False), ("forkserver", True), ("spawn", True)],
    ids=["fork-after-parallel-call", "fork-before-any-call", "forkserver", "spawn"],
)
def test_multiprocessing_children_compute(method, parallel_first):
    """Children compute the parent's bits and finish. A child forked after a
    call that ran on 2 threads computes on one thread (GNU libgomp's thread
    pool does not survive fork(): its next parallel region would wait forever
    for workers the child does not have); every other child keeps OpenMP's
    threads."""
    got = run_python(
        f"METHOD = {method!r}\nPARALLEL_FIRST = {parallel_first}\n" + MULTIPROCESSING,
        timeout=60,
    )
    assert len(got["children"]) == 4
    for pid, threads, d in got["children"]:
        assert pid != got["parent"]
        assert d == got["want"]
        if method == "fork":
            # set_num_threads(2) is inherited; threads already run in the parent make it 1.
            assert threads == (1 if parallel_first else 2)


# ---------------------------------------------------------------------------
# Memory

LEAKS = """
import gc
dotattn.set_num_threads(1)  # memory is the point, not speed: keep the calls short on a busy machine
rng = np.random.default_rng(7)
q = rng.standard_normal((2, 2, 8, 16), dtype=np.float32)
k = rng.standard_normal((2, 2, 12, 16), dtype=np.float32)
v = rng.standard_normal((2, 2, 12, 16), dtype=np.float32)
q64 = q.astype(np.float64)
q_fortran = np.asfortranarray(q)
mask = rng.random((8, 12)) < 0.5
out = np.empty((2, 2, 8, 16), np.float32)

def good(i):
    j = i % 5
    if j == 0:
        dotattn.attention(q, k, v)
    elif j == 1:
        dotattn.attention(q, k, v, attn_mask=mask, return_lse=True)
    elif j == 2:
        dotattn.attention(q_fortran, k, v, is_causal=True)  # copied first
    elif j == 3:
        dotattn.attention(q, k, v, out=out)
    else:
        dotattn.attention_weights(q, k, is_causal="lower_right")

BAD = [
    (ValueError, lambda: dotattn.attention(q, k[..., :8], v)),                     # shapes
    (ValueError, lambda: dotattn.attention(q, k, v, attn_mask=mask[:5])),         # mask shape
    (TypeError, lambda: dotattn.attention(q64, k, v)),                            # mixed dtypes
    (TypeError, lambda: dotattn.attention(q.astype(np.int32), k, v)),             # bad dtype
    (ValueError, lambda: dotattn.attention(q, k, v, out=out[:, :1])),             # out= shape
    (TypeError, lambda: dotattn.attention(q, k, v, out=out.astype(np.float64))),  # out= dtype
    (ValueError, lambda: dotattn.attention_weights(q, k[..., :8])),               # shapes
]

def bad(i):
    error, call = BAD[i % len(BAD)]
    try:
        call()
    except error:
        return
    raise AssertionError("no error")

report = {}
for name, step in (("good", good), ("bad", bad)):
    for i in range(1000):  # warm-up: caches, free lists, lazily made objects
        step(i)
    gc.collect()
    before = rss_bytes()
    start = time.perf_counter()
    for i in range(N):
        step(i)
    seconds = time.perf_counter() - start
    gc.collect()
    report[name] = {"calls": N, "growth": rss_bytes() - before, "seconds": seconds}
print(json.dumps(report))
"""

# Measured here: growth 0 to 4 KiB over each loop of 10,000 calls. Keeping one
# result per 5 calls (2 KiB of data each) adds 6 MiB, keeping each exception
# (with its traceback) 21 MiB: the bound catches any leak of 210 bytes or
# more per call, far above the noise (RSS moves in 4 KiB pages).
LEAK_BOUND = 2 * 2**20


def test_memory_stays_flat_over_10000_calls():
    got = run_python("N = 10_000\n" + LEAKS, timeout=120)
    print(got)
    for name in ("good", "bad"):
        assert got[name]["growth"] < LEAK_BOUND, got


# ---------------------------------------------------------------------------
# Ctrl-C

# Phase "direct": one long call on the main thread. Phase "worker": the same
# call on a worker thread while the main thread waits for it. The parent
# sends SIGINT 0.5 s after each phase says "start". The call writes into `out`
# (filled with NaN first), which shows whether it had ended when the
# KeyboardInterrupt came.
INTERRUPT = """
import signal
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
dotattn.set_num_threads(1)

def seconds(L):
    x = np.random.default_rng(0).standard_normal((1, 1, L, 64), dtype=np.float32)
    start = time.monotonic()
    dotattn.attention(x, x, x)
    return time.monotonic() - start

# One head, L = S, sized for a call of about 1.2 s here (time grows as L * S;
# the fastest of 3 timings is the least disturbed by other processes).
L = int(4096 * (1.2 / min(seconds(4096) for _ in range(3))) ** 0.5) // 256 * 256
L = max(4096, min(L, 65536))
x = np.random.default_rng(1).standard_normal((1, 1, L, 64), dtype=np.float32)
report = {"L": L}
outs = []

for phase in ("direct", "worker"):
    out = np.full((1, 1, L, 64), np.nan, np.float32)
    outs.append(out)
    ended = []

    def call():
        dotattn.attention(x, x, x, out=out)
        ended.append(time.monotonic())

    # The main thread waits on an Event: Python 3.11's Thread.join(), once
    # interrupted, may take a running thread for ended.
    finished = threading.Event()
    worker = threading.Thread(target=lambda: (call(), finished.set())) if phase == "worker" else None
    start = time.monotonic()
    print("start", flush=True)
    try:
        if worker is None:
            call()
        else:
            worker.start()
            finished.wait()
        raise AssertionError("no KeyboardInterrupt")
    except KeyboardInterrupt:
        caught = time.monotonic()
        written_when_caught = bool(np.isfinite(out).all())
    if worker is not None:
        assert finished.wait(timeout=60)
        worker.join()
    report[phase] = {
        "start": start,
        "caught": caught,
        "ended": ended[0] if ended else None,
        "written_when_caught": written_when_caught,
        "written": bool(np.isfinite(out).all()),
    }

report["same_result"] = outs[0].tobytes() == outs[1].tobytes()
print(json.dumps(report), flush=True)
"""


def test_ctrl_c_during_a_long_call(tmp_path):
    """A call cannot be interrupted: the GIL is released while it computes
    and the core has no cancellation point, so Python's SIGINT handler runs,
    and KeyboardInterrupt is raised, only when the call has returned (its
    result complete). With the call on a worker thread, the main thread gets
    the KeyboardInterrupt at once while the call finishes in the background."""
    script = tmp_path / "interrupt.py"
    script.write_text(PREAMBLE + "\n\n" + INTERRUPT)
    proc = subprocess.Popen(
        [sys.executable, "-W", "error", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    timer = threading.Timer(60, os.killpg, (proc.pid, signal.SIGKILL))
    timer.start()
    sent = []
    try:
        for _ in ("direct", "worker"):
            line = proc.stdout.readline()
            if not line.startswith("start"):
                proc.wait()
                pytest.fail(f"child: {line}{proc.stderr.read()}")
            time.sleep(0.5)
            sent.append(time.monotonic())
            proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate()
    finally:
        timer.cancel()
    assert proc.returncode == 0, f"exit status {proc.returncode} (-9: killed after 60 s)\n{stderr}"
    got = json.loads(stdout.strip().splitlines()[-1])
    print(got, "SIGINT sent at", sent)
    direct, worker = got["direct"], got["worker"]
    call = worker["ended"] - worker["start"]  # the call's length, uninterrupted
    assert call > 0.75, f"the call took {call:.2f} s: too short to tell"

    # On the main thread the KeyboardInterrupt waits for the call's end, and
    # comes right after it (at the next bytecode: no other call is needed).
    assert direct["written_when_caught"], got
    assert direct["caught"] - sent[0] > 0.2, (got, sent)
    assert direct["caught"] - direct["start"] < 2 * call + 0.5, (got, sent)

    # On a worker thread the main thread is interrupted at once; the call
    # goes on to its end, with the same result.
    assert worker["caught"] - sent[1] < 0.2, (got, sent)
    assert not worker["written_when_caught"] and worker["ended"] > worker["caught"], got
    assert direct["written"] and worker["written"] and got["same_result"]
