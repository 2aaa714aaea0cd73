"""dotattn: scaled dot-product attention on the CPU.

``dotattn.attention(query, key, value)`` computes
``softmax(query @ key.T * scale + mask) @ value`` over NumPy arrays, reading
them in place, with a cache-blocked online softmax in C++ and OpenMP
threads. ``dotattn.reference`` is the NumPy float64 definition of the same
semantics.
"""

from . import reference
from ._api import (
    attention,
    attention_paged,
    attention_varlen,
    attention_weights,
    get_isa,
    get_num_threads,
    merge,
    set_isa,
    set_num_threads,
    show_config,
    supported_isas,
)
from ._core import __version__
from ._quantized import QuantizedKV, quantize_kv

__all__ = [
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
