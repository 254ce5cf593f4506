# CPU emulation of the device layer (csrc/include/fastattn/device, csrc/emu) and the
# test-only module fastattn._emu.
#
#   -DFASTATTN_EMU=ON (default OFF, so release wheels leave all of this out) builds
#     fastattn_emu_runtime  static library, csrc/emu/runtime.cpp: the fiber scheduler that
#                           runs kernels compiled with FASTATTN_EMULATION. Link it into any
#                           target that compiles kernel sources for the emulation.
#     _emu                  pybind11 module installed as fastattn/_emu: the primitive test
#                           kernels (csrc/emu/test_kernels.cuh) on the emulation and, when
#                           the CUDA kernels are built, the same kernels compiled by nvcc
#                           (csrc/cuda/primitives_test.cu). No torch dependency.
#   -DFASTATTN_EMU_SANITIZE=address builds both with AddressSanitizer (the fiber switches
#     are annotated). Python is not linked against libstdc++, so preload both:
#       LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
#       ASAN_OPTIONS=detect_leaks=0 python -m pytest tests/test_primitives.py
#   -DFASTATTN_EMU_UCONTEXT in CMAKE_CXX_FLAGS forces the portable ucontext fiber switch
#     (the default on x86-64 is a hand-written one, ~6x faster per warp collective).
#
# Include after find_package(pybind11) and include(FastattnTorch) (FASTATTN_WITH_CUDA).

option(FASTATTN_EMU "Build the CPU emulation runtime and the test-only module fastattn._emu" OFF)
set(FASTATTN_EMU_SANITIZE "" CACHE STRING
    "Sanitizer for the emulation runtime and fastattn._emu (e.g. address); empty: none")

if(NOT FASTATTN_EMU)
  return()
endif()

get_filename_component(_fa_emu_root "${CMAKE_CURRENT_LIST_DIR}/.." ABSOLUTE)
find_package(Threads REQUIRED)

set(_fa_emu_flags -O2 -Wall -Wextra -Wno-psabi)
if(FASTATTN_EMU_SANITIZE)
  list(APPEND _fa_emu_flags -fsanitize=${FASTATTN_EMU_SANITIZE} -fno-omit-frame-pointer -g)
endif()

add_library(fastattn_emu_runtime STATIC "${_fa_emu_root}/csrc/emu/runtime.cpp")
target_include_directories(fastattn_emu_runtime PUBLIC "${_fa_emu_root}/csrc/include")
target_compile_features(fastattn_emu_runtime PUBLIC cxx_std_20)
set_target_properties(fastattn_emu_runtime PROPERTIES POSITION_INDEPENDENT_CODE ON)
target_compile_options(fastattn_emu_runtime PRIVATE ${_fa_emu_flags})
target_link_libraries(fastattn_emu_runtime PUBLIC Threads::Threads)
if(FASTATTN_EMU_SANITIZE)
  target_link_options(fastattn_emu_runtime PUBLIC -fsanitize=${FASTATTN_EMU_SANITIZE})
endif()

set(_fa_emu_sources
  "${_fa_emu_root}/csrc/emu/module.cpp"
  "${_fa_emu_root}/csrc/emu/test_kernels_emu.cpp")
if(FASTATTN_WITH_CUDA)
  list(APPEND _fa_emu_sources "${_fa_emu_root}/csrc/cuda/primitives_test.cu"
                              "${_fa_emu_root}/csrc/cuda/primitives_test_sm90.cu")
endif()

pybind11_add_module(_emu MODULE ${_fa_emu_sources})
target_include_directories(_emu PRIVATE "${_fa_emu_root}/csrc/include" "${_fa_emu_root}/csrc")
target_link_libraries(_emu PRIVATE fastattn_emu_runtime)
target_compile_options(_emu PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${_fa_emu_flags}>)
# The link-time optimiser repeats GCC's note on passing the 128-byte aligned tensor map.
target_link_options(_emu PRIVATE -Wno-psabi)

if(FASTATTN_WITH_CUDA)
  target_compile_definitions(_emu PRIVATE FASTATTN_EMU_WITH_CUDA=1)
  target_link_libraries(_emu PRIVATE CUDA::cudart)
  # One CUDA runtime: the shared one torch loads (CMake would add cudart_static too).
  set_target_properties(_emu PROPERTIES CUDA_RUNTIME_LIBRARY Shared)
  target_compile_options(_emu PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-O3>)
  if(DEFINED FASTATTN_CUDA_ARCHS_STR)
    # Torch's CMake config already put -gencode flags for TORCH_CUDA_ARCH_LIST into
    # CMAKE_CUDA_FLAGS (see cmake/FastattnTorch.cmake), as for _C.
    set_target_properties(_emu PROPERTIES CUDA_ARCHITECTURES OFF)
  else()
    set_target_properties(_emu PROPERTIES CUDA_ARCHITECTURES "80-real;90a-real")
  endif()
endif()

install(TARGETS _emu LIBRARY DESTINATION fastattn)

# fastattn._emu_ops: torch.ops.fastattn_emu.*, the op glue (csrc/emu/ops_emu.cpp, over
# csrc/ops/kernel_ops.h) and the CUDA kernel sources compiled for the emulation (the
# other csrc/emu/<op>_emu.cpp, each including its csrc/cuda/<op>.cu with
# FASTATTN_EMULATION defined).
file(GLOB _fa_emu_kernels CONFIGURE_DEPENDS "${_fa_emu_root}/csrc/emu/*_emu.cpp")
list(REMOVE_ITEM _fa_emu_kernels "${_fa_emu_root}/csrc/emu/test_kernels_emu.cpp")
pybind11_add_module(_emu_ops MODULE
  "${_fa_emu_root}/csrc/emu/ops_module.cpp"
  "${_fa_emu_root}/csrc/ops/params.cpp"
  ${_fa_emu_kernels})
target_include_directories(_emu_ops PRIVATE "${_fa_emu_root}/csrc/include" "${_fa_emu_root}/csrc")
target_link_libraries(_emu_ops PRIVATE torch fastattn_emu_runtime)
target_compile_options(_emu_ops PRIVATE ${_fa_emu_flags} -Wno-unused-parameter)
install(TARGETS _emu_ops LIBRARY DESTINATION fastattn)
message(STATUS "fastattn: emulation runtime and fastattn._emu enabled "
               "(CUDA test kernels: ${FASTATTN_WITH_CUDA})")
