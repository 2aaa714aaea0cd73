"""Thread control, thread-count independence, and calls from many Python threads."""

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import dotattn
import numpy as np
import pytest
from conftest import DTYPES, qkv

pytestmark = pytest.mark.usefixtures("isa")


def test_set_and_get(restore_threads):
    dotattn.set_num_threads(3)
    assert dotattn.get_num_threads() == 3
    dotattn.set_num_threads(1)
    assert dotattn.get_num_threads() == 1


def test_set_num_threads_applies_to_every_python_thread(restore_threads):
    dotattn.set_num_threads(5)
    seen = []
    t = threading.Thread(target=lambda: seen.append(dotattn.get_num_threads()))
    t.start()
    t.join()
    assert seen == [5]


@pytest.mark.parametrize("n", ["1", "3"])
def test_omp_num_threads_is_the_default(n):
    code = "import dotattn; print(dotattn.get_num_threads(), dotattn.show_config('dicts')['num_threads'])"
    env = {**os.environ, "OMP_NUM_THREADS": n}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.split() == [n, n]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape, is_causal",
    [
        ((2, 4, 2, 200, 300, 64), False),
        ((1, 4, 4, 333, 333, 32), True),
        ((3, 8, 2, 1, 1000, 64), False),
        ((1, 2, 2, 130, 70, 16), "lower_right"),
    ],
)
def test_results_do_not_depend_on_the_thread_count(rng, restore_threads, dtype, shape, is_causal):
    B, Hq, Hkv, L, S, E = shape
    q, k, v = qkv(rng, dtype, batch=(B,), Hq=Hq, Hkv=Hkv, L=L, S=S, E=E)
    results = []
    for n in (1, 2, 3):
        dotattn.set_num_threads(n)
        results.append(
            (
                dotattn.attention(q, k, v, is_causal=is_causal, return_lse=True),
                dotattn.attention_weights(q, k, is_causal=is_causal),
            )
        )
    for (out, lse), weights in results[1:]:
        np.testing.assert_array_equal(out, results[0][0][0])
        np.testing.assert_array_equal(lse, results[0][0][1])
        np.testing.assert_array_equal(weights, results[0][1])


def test_concurrent_calls_match_serial_calls(rng):
    cases = []
    for i in range(16):
        dtype = DTYPES[i % 2]
        cases.append(qkv(rng, dtype, batch=(2,), Hq=4, Hkv=2, L=40 + i, S=90 + 3 * i, E=16 + i))
    serial = [dotattn.attention(*c, is_causal=bool(i % 3)) for i, c in enumerate(cases)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):
            parallel = list(
                pool.map(lambda ic: dotattn.attention(*ic[1], is_causal=bool(ic[0] % 3)), enumerate(cases))
            )
            for a, b in zip(parallel, serial):
                np.testing.assert_array_equal(a, b)


def test_the_gil_is_released_while_computing(rng, restore_threads):
    dotattn.set_num_threads(1)
    q, k, v = qkv(rng, np.float32, batch=(1,), Hq=16, L=2048, S=2048, E=64)
    done = threading.Event()

    def call():
        dotattn.attention(q, k, v)
        done.set()

    worker = threading.Thread(target=call)
    start = time.perf_counter()
    worker.start()
    ticks = 0
    while not done.is_set():  # runs only while the worker is not holding the GIL
        ticks += 1
        time.sleep(0.001)
    worker.join()
    elapsed = time.perf_counter() - start
    assert elapsed > 0.05, "the call was too short to tell"
    assert ticks >= 10
