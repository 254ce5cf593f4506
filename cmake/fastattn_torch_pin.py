"""scikit-build-core metadata provider: a wheel pins the torch it was compiled against.

fastattn's extension links libtorch's C++ API, which has no stable ABI across torch
releases or between its CUDA and CPU builds; a wheel that merely said ``torch>=2.11``
would install beside any other torch and then fail at import with a loader error. So the
build stamps the torch it compiled against (the one importable in the build environment:
``--no-build-isolation`` uses the installed torch) into two fields:

- ``dependencies``: ``torch==<its distribution version>``. That is what pip compares, and it
  carries the variant only when the distribution does (``2.14.1+cpu`` from PyTorch's own
  index); PyPI's default CUDA build is plain ``2.14.1`` although ``torch.__version__`` says
  ``2.14.1+cu130``, so ``import fastattn`` checks the variant too (``_torch_check.py``);
- ``version``: ``<base>+torch<release>.<variant>``, e.g. ``0.1.0+torch2.14.1.cu130``, so the
  wheel's file name says what it is for.

pyproject.toml points [tool.scikit-build.metadata] here (``provider-path = "cmake"``).
"""
from __future__ import annotations

from typing import Any, Mapping


def torch_build() -> tuple[str, str]:
    """(torch.__version__, variant) of the torch importable here; variant is the local
    label (``cu130``, ``cpu``), or derived from the CUDA/ROCm version when there is none."""
    import torch

    version = torch.__version__
    local = version.partition("+")[2]
    if local:
        return version, local
    if torch.version.cuda:
        return version, "cu" + torch.version.cuda.replace(".", "")
    if getattr(torch.version, "hip", None):
        return version, "rocm" + torch.version.hip.split("-")[0]
    return version, "cpu"


def dynamic_metadata(field: str, settings: Mapping[str, Any]) -> Any:
    if field == "dependencies":
        from importlib.metadata import version as dist_version

        return [f"torch=={dist_version('torch')}"]
    if field == "version":
        version, variant = torch_build()
        base = settings.get("base")
        if not base:
            raise RuntimeError("fastattn_torch_pin: the version entry needs base = \"X.Y.Z\"")
        local = f"torch{version.partition('+')[0]}.{variant}"
        # A local label holds letters, digits and dots only.
        local = "".join(ch if ch.isalnum() or ch == "." else "." for ch in local)
        return f"{base}+{local}"
    raise RuntimeError(f"fastattn_torch_pin: cannot provide the {field!r} field")
