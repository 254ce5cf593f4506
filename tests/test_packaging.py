"""What a built fastattn says about the torch it needs, and what `import fastattn` says when
it meets another one.

The extension links libtorch's C++ API, which is tied to one torch release and variant
(CUDA or CPU build): a wheel pins that torch (cmake/fastattn_torch_pin.py) and names it in
its version, and an import beside another torch raises an ImportError naming both and the
rebuild command, instead of a bare loader error.
"""

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import fastattn
from fastattn import _build_config

ROOT = Path(__file__).resolve().parent.parent


def _load_pin_provider():
    spec = importlib.util.spec_from_file_location("fastattn_torch_pin",
                                                  ROOT / "cmake" / "fastattn_torch_pin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _expected_local_label():
    public, _, local = torch.__version__.partition("+")
    variant = local or ("cu" + torch.version.cuda.replace(".", "") if torch.version.cuda
                        else "cpu")
    return f"torch{public}.{variant}"


# ---------------------------------------------------------------------------------------
# the metadata provider
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("version,cuda,variant", [
    ("2.14.1+cu130", "13.0", "cu130"),
    ("2.11.0", "12.8", "cu128"),      # PyPI's CUDA builds may carry no local label
    ("2.13.0+cpu", None, "cpu"),
    ("2.12.0", None, "cpu"),
])
def test_pin_provider_variants(monkeypatch, version, cuda, variant):
    pin = _load_pin_provider()
    monkeypatch.setattr(torch, "__version__", version)
    monkeypatch.setattr(torch.version, "cuda", cuda)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    assert pin.torch_build() == (version, variant)
    public = version.partition("+")[0]
    assert pin.dynamic_metadata("version", {"base": "0.1.0"}) == f"0.1.0+torch{public}.{variant}"
    deps = pin.dynamic_metadata("dependencies", {})
    assert deps == [f"torch=={importlib.metadata.version('torch')}"]


def test_pin_provider_rejects_other_fields():
    pin = _load_pin_provider()
    with pytest.raises(RuntimeError, match="description"):
        pin.dynamic_metadata("description", {})
    with pytest.raises(RuntimeError, match="base"):
        pin.dynamic_metadata("version", {})


def test_installed_copy_records_its_torch():
    assert _build_config.TORCH_VERSION == torch.__version__
    assert _build_config.TORCH_CUDA == (torch.version.cuda or "")
    assert fastattn.__version__.endswith("+" + _expected_local_label())
    assert fastattn.build_info()["torch_version"] == torch.__version__


# ---------------------------------------------------------------------------------------
# a built wheel (CPU-only build, to keep it short: the metadata does not depend on CUDA)
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    env = dict(os.environ, FASTATTN_CUDA="OFF", FASTATTN_EMU="OFF")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps",
         "--no-index", "-w", str(out), "-C", "build-dir=build/wheel-test/{wheel_tag}", "."],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    wheels = list(out.glob("fastattn-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_pins_its_torch(wheel):
    label = _expected_local_label()
    assert f"+{label}-" in wheel.name, wheel.name
    with zipfile.ZipFile(wheel) as z:
        meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = z.read(meta_name).decode()
        config = z.read("fastattn/_build_config.py").decode()
        names = z.namelist()
    fields = [line.split(": ", 1) for line in meta.splitlines() if ": " in line]
    version = [v for k, v in fields if k == "Version"]
    requires = [v for k, v in fields if k == "Requires-Dist"]
    assert version == [f"0.1.0+{label}"], meta[:800]
    torch_req = [r for r in requires if r.startswith("torch")]
    assert torch_req == [f"torch=={importlib.metadata.version('torch')}"], requires
    assert f'TORCH_VERSION = "{torch.__version__}"' in config
    assert not [n for n in names if "_emu" in n], "test-only emulation modules in a wheel"


# ---------------------------------------------------------------------------------------
# import beside another torch (simulated in a subprocess)
# ---------------------------------------------------------------------------------------

IMPORT_WITH = r'''
import importlib.abc, sys, warnings
import torch
fake_version, fail_load = sys.argv[1], sys.argv[2] == "1"
if fake_version:
    torch.__version__ = fake_version

class FailLoad(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "fastattn._C":
            raise ImportError("libtorch_cuda.so: cannot open shared object file: "
                              "No such file or directory")

if fail_load:
    sys.meta_path.insert(0, FailLoad())
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        import fastattn
    except ImportError as error:
        print("IMPORTERROR:", error)
    else:
        print("IMPORTED")
for w in caught:
    if issubclass(w.category, RuntimeWarning):
        print("WARNING:", w.message)
'''


def _import_with(fake_version, fail_load):
    done = subprocess.run([sys.executable, "-c", IMPORT_WITH, fake_version, str(int(fail_load))],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_beside_another_torch_names_both_and_the_fix():
    out = _import_with("2.13.0", fail_load=True)
    assert "IMPORTERROR:" in out, out
    assert f"built for torch {torch.__version__}" in out, out
    assert "but torch 2.13.0" in out, out
    assert "libtorch_cuda.so: cannot open shared object file" in out, out
    assert "pip install --no-build-isolation --no-deps --force-reinstall" in out, out
    assert str(ROOT) in out, out  # the tree it was built from, which still exists here


def test_load_failure_with_its_own_torch_still_says_how_to_rebuild():
    out = _import_with("", fail_load=True)
    assert "IMPORTERROR:" in out and "which is the torch installed" in out, out
    assert "pip install --no-build-isolation" in out, out


def test_loads_beside_another_torch_with_a_warning():
    out = _import_with("2.13.0", fail_load=False)
    assert "IMPORTED" in out, out
    assert "WARNING:" in out and "built for torch" in out and "2.13.0" in out, out


def test_import_with_its_own_torch_is_silent():
    out = _import_with("", fail_load=False)
    assert out.strip() == "IMPORTED", out
