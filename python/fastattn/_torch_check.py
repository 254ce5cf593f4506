"""Is the installed torch the one fastattn's extension was compiled against?

The extension links libtorch's C++ API, which has no stable ABI across torch releases or
between its CUDA and CPU builds. A mismatch shows up as a loader error
(``libtorch_cuda.so: cannot open shared object file``, an undefined symbol) that names
neither torch; here it becomes an ImportError naming both and the command that rebuilds.
"""
from __future__ import annotations

import os
import shlex
from typing import Optional

import torch

from . import _build_config


def _describe(version: str, cuda: str) -> str:
    return f"torch {version} ({'CUDA ' + cuda if cuda else 'CPU build'})"


def built_for() -> str:
    return _describe(_build_config.TORCH_VERSION, _build_config.TORCH_CUDA)


def installed() -> str:
    return _describe(torch.__version__, torch.version.cuda or "")


def matches() -> bool:
    return (torch.__version__ == _build_config.TORCH_VERSION
            and (torch.version.cuda or "") == _build_config.TORCH_CUDA)


def rebuild_command() -> str:
    """The one command that rebuilds fastattn against the installed torch (`make build` in
    a checkout does the same for its editable install)."""
    source = _build_config.SOURCE_DIR
    if not os.path.isfile(os.path.join(source, "pyproject.toml")):
        source = "<path to the fastattn source>"
    return (f"pip install --no-build-isolation --no-deps --force-reinstall {shlex.quote(source)}"
            " (in a source checkout: make build)")


def load_error_message(error: BaseException) -> str:
    """The ImportError text for an extension that failed to load."""
    if matches():
        return (f"fastattn's native extension failed to load ({error}). It was built for "
                f"{built_for()}, which is the torch installed; rebuild it with: "
                f"{rebuild_command()}")
    return (f"fastattn was built for {built_for()}, but {installed()} is installed, and its "
            f"native extension cannot load with it ({error}). Rebuild fastattn against the "
            f"installed torch: {rebuild_command()} (or install the torch it was built for).")


def mismatch_warning() -> Optional[str]:
    """A warning for an extension that loaded beside another torch than its own."""
    if matches():
        return None
    return (f"fastattn was built for {built_for()} but runs with {installed()}: its C++ "
            f"extension may misbehave. Rebuild it with: {rebuild_command()}")
