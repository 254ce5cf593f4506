"""Argument checks shared by the public functions.

Shapes, dtypes, devices and strides are checked here, before any op runs; checks
on tensor *values* (lengths, block-table entries, slots) live in the C++ ops so
that no host sync is forced here (DESIGN.md §2). Every message names the
argument and gives what was received and what was expected.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

CPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CUDA_DTYPES = (torch.float16, torch.bfloat16)
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
CPU_MAX_HEAD_DIM = 512
CUDA_MAX_HEAD_DIM = 256
FLOAT32_MAX = 3.4028234663852886e38
INT32_MAX = 2**31 - 1


def shape_str(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def tensor(name: str, t, ndim: int, expected: str) -> None:
    """t must be a tensor with ndim dims; `expected` reads like "[B, Sq, Hq, D]"."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape {expected}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name}: expected shape {expected} ({ndim} dims), got {shape_str(t)}")


def tensor_min_dims(name: str, t, min_ndim: int, expected: str) -> None:
    """t must be a tensor with at least min_ndim dims."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape {expected}, got {type(t).__name__}")
    if t.dim() < min_ndim:
        raise ValueError(f"{name}: expected shape {expected} (at least {min_ndim} dims), got {shape_str(t)}")


def shape(name: str, t: torch.Tensor, want: Sequence[int], expected: str) -> None:
    """t.shape must equal `want`; `expected` names the symbols, e.g. "[B, Sk, Hk, D]"."""
    if tuple(t.shape) != tuple(want):
        got = shape_str(t)
        want_s = "[" + ", ".join(str(w) for w in want) + "]"
        raise ValueError(f"{name}: expected shape {expected} = {want_s}, got {got}")


def same_device(name: str, t: torch.Tensor, ref: torch.Tensor, ref_name: str) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name}: expected device {ref.device} (the device of {ref_name}), got {t.device}")


def float_dtype(name: str, t: torch.Tensor) -> None:
    allowed = CUDA_DTYPES if t.device.type == "cuda" else CPU_DTYPES
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name}: expected a cpu or cuda tensor, got device {t.device}")
    if t.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{name}: expected dtype in ({names}) on {t.device.type}, got {str(t.dtype).replace('torch.', '')}")


def same_dtype(name: str, t: torch.Tensor, ref: torch.Tensor, ref_name: str) -> None:
    if t.dtype != ref.dtype:
        raise TypeError(f"{name}: expected dtype {str(ref.dtype).replace('torch.', '')} (the dtype of {ref_name}), "
                        f"got {str(t.dtype).replace('torch.', '')}")


def dtype_str(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def cache_dtype(name: str, cache: torch.Tensor, ref: torch.Tensor, ref_name: str) -> None:
    """A paged cache holds ref's dtype, or fp8 (float8_e4m3fn, float8_e5m2) for any ref dtype."""
    if cache.dtype != ref.dtype and cache.dtype not in FP8_DTYPES:
        raise TypeError(f"{name}: expected dtype {dtype_str(ref.dtype)} (the dtype of {ref_name}) "
                        f"or an fp8 dtype (float8_e4m3fn, float8_e5m2), got {dtype_str(cache.dtype)}")


def kv_scale(name: str, scale, cache: torch.Tensor) -> tuple[Optional[torch.Tensor], float]:
    """k_scale / v_scale of an fp8 cache [P, page_size, Hk, D]: None (1.0), a positive finite
    float, or a float32 tensor of shape [] or [Hk] on the cache's device (its values are
    checked by the op, without a host sync). Returns (tensor or None, float)."""
    if scale is None:
        return None, 1.0
    if cache.dtype not in FP8_DTYPES:
        raise ValueError(f"{name}: scales apply to fp8 caches (float8_e4m3fn, float8_e5m2); the "
                         f"cache has dtype {dtype_str(cache.dtype)}, so pass None")
    if isinstance(scale, torch.Tensor):
        hk = cache.shape[2]
        if scale.dtype != torch.float32:
            raise TypeError(f"{name}: expected a float32 tensor of shape [] or [Hk] = [{hk}], got "
                            f"dtype {dtype_str(scale.dtype)}")
        if tuple(scale.shape) not in ((), (hk,)):
            raise ValueError(f"{name}: expected shape [] (per tensor) or [Hk] = [{hk}] (per KV "
                             f"head), got {shape_str(scale)}")
        same_device(name, scale, cache, "the cache")
        return scale, 1.0
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"{name}: expected None, a float or a float32 tensor, got "
                        f"{type(scale).__name__}")
    if not 0 < scale <= FLOAT32_MAX:
        raise ValueError(f"{name}: expected a positive finite float32 value, got {scale}")
    return None, float(scale)


def last_dim_contiguous(name: str, t: torch.Tensor) -> None:
    if t.numel() > 0 and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name}: the last dimension must be contiguous (stride 1), got strides {tuple(t.stride())}")
    if any(s < 0 for s in t.stride()):
        raise ValueError(f"{name}: negative strides are not supported, got strides {tuple(t.stride())}")


def head_dim(name: str, t: torch.Tensor) -> None:
    d = t.shape[-1]
    if t.device.type == "cuda":
        if d <= 0 or d > CUDA_MAX_HEAD_DIM or d % 8 != 0:
            raise ValueError(f"{name}: head dim D = {d} unsupported on CUDA; expected a multiple of 8 "
                             f"up to {CUDA_MAX_HEAD_DIM} (shape {shape_str(t)})")
    elif d <= 0 or d > CPU_MAX_HEAD_DIM:
        raise ValueError(f"{name}: head dim D = {d} unsupported on CPU; expected 1..{CPU_MAX_HEAD_DIM} "
                         f"(shape {shape_str(t)})")


def index_tensor(name: str, t, dtype: torch.dtype, want: Sequence[int], expected: str,
                 ref: torch.Tensor, ref_name: str = "q") -> None:
    """An index tensor: exact shape, exact integer dtype, ref's device, contiguous rows."""
    tensor(name, t, len(want), expected)
    if t.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {str(dtype).replace('torch.', '')} with shape {expected}, "
                        f"got {str(t.dtype).replace('torch.', '')}")
    shape(name, t, want, expected)
    same_device(name, t, ref, ref_name)
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name}: the last dimension must be contiguous (stride 1), got strides {tuple(t.stride())}")


def gqa(q_name: str, hq: int, k_name: str, hk: int) -> None:
    if hq <= 0:
        raise ValueError(f"{q_name}: expected at least one query head, got Hq = {hq}")
    if hk <= 0 or hq % hk != 0:
        raise ValueError(f"{k_name}: number of KV heads Hk = {hk} must divide the number of query heads "
                         f"Hq = {hq} of {q_name} (GQA/MQA needs Hq % Hk == 0)")


def softmax_scale(scale: Optional[float], d: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"softmax_scale: expected a float or None, got {type(scale).__name__}")
    # A comparison, not math.isfinite: it also traces when torch.compile makes the
    # value symbolic, and it rejects what would overflow the kernels' fp32.
    if not abs(scale) <= FLOAT32_MAX:
        raise ValueError(f"softmax_scale: expected a finite float32 value, got {scale}")
    return float(scale)


def window(window_size) -> tuple[int, int]:
    if (not isinstance(window_size, (tuple, list)) or len(window_size) != 2
            or not all(isinstance(w, int) and not isinstance(w, bool) for w in window_size)):
        raise TypeError(f"window_size: expected a pair of ints (left, right), got {window_size!r}")
    left, right = window_size
    if left < -1 or right < -1:
        raise ValueError(f"window_size: entries must be >= 0, or -1 for unbounded, got {tuple(window_size)}")
    # A window wider than any sequence is unbounded; clamping keeps it an int64.
    return min(left, INT32_MAX), min(right, INT32_MAX)


def softcap(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"softcap: expected a float, got {type(value).__name__}")
    if not (0 <= value <= FLOAT32_MAX):
        raise ValueError(f"softcap: expected a finite float32 value >= 0 (0 disables it), got {value}")
    return float(value)


def non_negative_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < 0 or value > INT32_MAX:
        raise ValueError(f"{name}: expected an int in [0, 2**31 - 1], got {value}")
    return value


def boolean(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return value


def packed_lengths(cu_name: str, batch: int, t_name: str, total: int, max_name: str,
                   max_seqlen: int) -> None:
    """Shape-level consistency of packed sequences (the values are checked by the ops)."""
    if batch == 0 and total > 0:
        raise ValueError(f"{cu_name}: shape [1] means B = 0 sequences, but {t_name} has {total} "
                         f"tokens (expected {t_name}.shape[0] = 0)")
    if max_seqlen == 0 and total > 0:
        raise ValueError(f"{max_name}: 0, but {t_name} has {total} tokens, so some sequence is "
                         f"longer; expected at least the longest sequence")
