"""fastattn: attention kernels for inference servers.

Dense (self/cross), varlen and paged-KV attention with one set of semantics on
CPU and CUDA; see README.md for shapes, masking and the validation rules.
"""
import warnings

import torch  # noqa: F401  (loads libtorch before the extension)

from . import _torch_check

try:
    from . import _C  # registers torch.ops.fastattn.*
except ImportError as _error:
    raise ImportError(_torch_check.load_error_message(_error)) from _error
if _torch_check.mismatch_warning():
    warnings.warn(_torch_check.mismatch_warning(), RuntimeWarning, stacklevel=2)
from . import _fake  # noqa: F401  (fake kernels for torch.compile)
from ._api import (
    append_kv,
    attention,
    attention_varlen,
    cross_attention,
    merge_attention_states,
    paged_attention,
    self_attention,
)
from .cache import OutOfPagesError, PagedBatch, PagedKVCache
from . import compat  # noqa: E402  (FlashAttention-2's function names)

__version__ = _C.build_info()["version"]


def check_errors() -> None:
    """Raise ValueError if a CUDA kernel found out-of-range index values.

    On CUDA, index values (block-table entries, lengths, cu_seqlens, slots) are
    checked by the kernels, which skip bad ones instead of reading through them:
    checking on the host would need a device sync. Such an error surfaces at the
    next fastattn call on that device, or here: this synchronises every device
    fastattn has launched on (so it cannot run inside CUDA graph capture). A no-op
    when no CUDA kernel has run.
    """
    message = _C.take_kernel_errors()
    if message:
        raise ValueError(message)


def build_info() -> dict:
    """How this copy was built: version, torch version, CUDA kernels and architectures,
    and the CPU kernel level in use (cpu_isa: generic, avx512 or avx512_bf16)."""
    return dict(_C.build_info())


__all__ = [
    "attention",
    "self_attention",
    "cross_attention",
    "attention_varlen",
    "paged_attention",
    "append_kv",
    "merge_attention_states",
    "PagedKVCache",
    "PagedBatch",
    "OutOfPagesError",
    "build_info",
    "check_errors",
    "__version__",
]
