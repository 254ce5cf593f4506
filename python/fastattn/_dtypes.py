"""The dtype names our command lines accept (`fastattn.bench`, `fastattn.demo`)."""
from __future__ import annotations

import torch

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def dtype_name(dtype: torch.dtype) -> str:
    """"float32" rather than "torch.float32": the spelling of the CLIs and of the reports."""
    return str(dtype).replace("torch.", "")
