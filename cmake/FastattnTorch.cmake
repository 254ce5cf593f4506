# Locate Torch and decide whether the CUDA kernels are built.
#
# CUDA is built when FASTATTN_CUDA is ON (the default; env FASTATTN_CUDA=OFF
# turns it off through pyproject.toml), torch is a CUDA build and nvcc is found.
# No GPU is needed: CI compiles every kernel on GPU-less machines.

execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
          "import torch, os; print(torch.utils.cmake_prefix_path); print(torch.version.cuda or ''); print(os.path.dirname(torch.__file__)); print(int(torch.compiled_with_cxx11_abi())); print(torch.__version__)"
  OUTPUT_VARIABLE _fa_torch_out
  OUTPUT_STRIP_TRAILING_WHITESPACE
  RESULT_VARIABLE _fa_torch_rc)
if(NOT _fa_torch_rc EQUAL 0)
  message(FATAL_ERROR "fastattn: cannot import torch with ${Python_EXECUTABLE}; install torch first "
                      "(and build with --no-build-isolation)")
endif()
string(REPLACE "\n" ";" _fa_torch_out "${_fa_torch_out}")
list(GET _fa_torch_out 0 _fa_torch_prefix)
list(LENGTH _fa_torch_out _fa_len)
list(GET _fa_torch_out 1 _fa_torch_cuda)
list(GET _fa_torch_out 2 _fa_torch_dir)
list(GET _fa_torch_out 3 _fa_torch_cxx11_abi)
# The torch this build compiles against, local label included (2.14.1+cu130): written into
# fastattn/_build_config.py, which `import fastattn` compares with the torch it finds.
list(GET _fa_torch_out 4 FASTATTN_BUILT_TORCH_VERSION)
set(FASTATTN_BUILT_TORCH_CUDA "${_fa_torch_cuda}")
list(APPEND CMAKE_PREFIX_PATH "${_fa_torch_prefix}")

set(FASTATTN_WITH_CUDA OFF)
if(FASTATTN_CUDA AND _fa_torch_cuda)
  if(NOT CMAKE_CUDA_COMPILER)
    # Prefer the toolkit's own nvcc over wrappers earlier on PATH.
    foreach(_fa_root "$ENV{CUDA_HOME}" "$ENV{CUDA_PATH}" "/usr/local/cuda")
      if(_fa_root AND EXISTS "${_fa_root}/bin/nvcc")
        set(CMAKE_CUDA_COMPILER "${_fa_root}/bin/nvcc")
        # Torch's config still runs the legacy FindCUDA, which would otherwise
        # guess the root from whatever nvcc is first on PATH.
        set(CUDA_TOOLKIT_ROOT_DIR "${_fa_root}")
        break()
      endif()
    endforeach()
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(FASTATTN_WITH_CUDA ON)
  else()
    message(WARNING "fastattn: torch is a CUDA build but nvcc was not found; building CPU-only")
  endif()
elseif(FASTATTN_CUDA)
  message(STATUS "fastattn: torch has no CUDA; building CPU-only")
endif()

if(FASTATTN_WITH_CUDA)
  enable_language(CUDA)
  set(CMAKE_CUDA_STANDARD 20)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  find_package(CUDAToolkit REQUIRED)
  # Shipped targets: sm_80 machine code (Ampere and Ada run it: A100, A10, L4, RTX 30xx/40xx),
  # sm_90a (Hopper only: H100/H200; wgmma/TMA) and compute_80 PTX, which the driver
  # JIT-compiles on GPUs newer than both (Blackwell: B200 sm_100, RTX 50xx sm_120), since
  # sm_90a code is architecture-specific and runs nowhere else.
  # Torch's CMake config turns TORCH_CUDA_ARCH_LIST into -gencode flags and
  # ignores CMAKE_CUDA_ARCHITECTURES. Without a GPU its default includes
  # compute_50, which nvcc 13 rejects, so it must be set before
  # find_package(Torch). Users override it through the environment.
  if(NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
    set(ENV{TORCH_CUDA_ARCH_LIST} "8.0+PTX;9.0a")
  endif()
  set(TORCH_CUDA_ARCH_LIST "$ENV{TORCH_CUDA_ARCH_LIST}")
  string(REPLACE ";" " " FASTATTN_CUDA_ARCHS_STR "$ENV{TORCH_CUDA_ARCH_LIST}")
endif()

if(FASTATTN_WITH_CUDA)
  find_package(Torch REQUIRED)
else()
  # CPU-only: Torch's CMake config insists on finding CUDA whenever torch is a
  # CUDA build, even if we compile no CUDA; the CPU code needs only headers
  # and the core libraries, so describe them directly.
  add_library(torch INTERFACE IMPORTED)
  target_include_directories(torch INTERFACE
    "${_fa_torch_dir}/include" "${_fa_torch_dir}/include/torch/csrc/api/include")
  foreach(_fa_lib torch torch_cpu c10)
    find_library(_fa_lib_${_fa_lib} ${_fa_lib} PATHS "${_fa_torch_dir}/lib" NO_DEFAULT_PATH REQUIRED)
    target_link_libraries(torch INTERFACE "${_fa_lib_${_fa_lib}}")
  endforeach()
  target_compile_definitions(torch INTERFACE _GLIBCXX_USE_CXX11_ABI=${_fa_torch_cxx11_abi})
  execute_process(COMMAND "${Python_EXECUTABLE}" -c "import torch; print(torch.__version__.split('+')[0])"
                  OUTPUT_VARIABLE Torch_VERSION OUTPUT_STRIP_TRAILING_WHITESPACE)
endif()
message(STATUS "fastattn: torch ${Torch_VERSION}, CUDA kernels: ${FASTATTN_WITH_CUDA}")
