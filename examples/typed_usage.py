"""dotattn's public API with type annotations.

dotattn ships type information (py.typed, and stubs for the compiled core),
so a type checker follows arrays through it: attention() returns an array of
its query's dtype, or the pair (out, lse) with return_lse=True. Check this
file against the installed package, then run it:

    pip install mypy && mypy --strict examples/typed_usage.py
    python examples/typed_usage.py
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dotattn
import numpy as np
from numpy.typing import NDArray


def decode_step(
    query: NDArray[np.float32],
    key_cache: NDArray[np.float32],
    value_cache: NDArray[np.float32],
    out: NDArray[np.float32],
) -> NDArray[np.float32]:
    """One decoding step against a KV cache, written into `out`; returns the
    log-sum-exp of each query row (for merging with attention elsewhere)."""
    result, lse = dotattn.attention(
        query, key_cache, value_cache, is_causal="lower_right", out=out, return_lse=True
    )
    assert result is out  # written in place
    return lse


def main() -> None:
    dotattn.set_num_threads(2)
    isa: str = dotattn.get_isa()
    config: dict[str, Any] = dotattn.show_config(mode="dicts")
    print(
        f"dotattn {dotattn.__version__}: {isa} kernels of {config['supported_isas']}, "
        f"{dotattn.get_num_threads()} threads"
    )

    rng = np.random.default_rng(0)
    # Grouped-query attention: 8 query heads over 2 key/value heads.
    q = rng.standard_normal((1, 8, 1, 64), dtype=np.float32)
    k = rng.standard_normal((1, 2, 256, 64), dtype=np.float32)
    v = rng.standard_normal((1, 2, 256, 64), dtype=np.float32)

    out = np.empty((1, 8, 1, 64), dtype=np.float32)
    lse = decode_step(q, k, v, out)
    ref, ref_lse = dotattn.reference.attention(q, k, v, is_causal="lower_right", return_lse=True)
    relative, _ = dotattn.reference.errors(out, ref)
    print(f"decode: out {out.shape} {out.dtype}, lse {lse.shape}, relative error {relative:.1e}")
    assert relative <= 1e-5 and dotattn.reference.errors(lse, ref_lse)[0] <= 1e-5

    # float64 in, float64 out: the weights of the first 4 query rows.
    q64 = rng.standard_normal((16, 32))
    k64 = rng.standard_normal((24, 32))
    weights: NDArray[np.float64] = dotattn.attention_weights(q64[:4], k64, is_causal=True)
    row_sums: NDArray[np.float64] = weights.sum(axis=-1)
    print(f"weights {weights.shape} {weights.dtype}, rows sum to {row_sums.round(12).tolist()}")
    assert np.allclose(row_sums, 1.0)

    # Without return_lse, the result is one array (not a tuple).
    full: NDArray[np.float64] = dotattn.attention(q64, k64, k64[:, :16], scale=0.125)
    print(f"attention {full.shape} {full.dtype}")


if TYPE_CHECKING:
    # What the annotations catch. With --strict, mypy also reports an ignore
    # that is not needed, so each line below must stay an error.
    def _mistakes(q: NDArray[np.float32]) -> None:
        dotattn.attention(q, q, q, is_causal="lower-right")  # type: ignore[call-overload]
        one: NDArray[np.float32] = dotattn.attention(q, q, q, return_lse=True)  # type: ignore[assignment]
        wide: NDArray[np.float64] = dotattn.attention(q, q, q)  # type: ignore[assignment]
        dotattn.set_isa(2)  # type: ignore[arg-type]
        print(one, wide, dotattn.show_config() + 1)  # type: ignore[operator]


if __name__ == "__main__":
    main()
