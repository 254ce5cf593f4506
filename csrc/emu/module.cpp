// fastattn._emu: test-only module exposing the primitive test kernels on two backends,
//   fastattn._emu.emu   the CPU emulation (always)
//   fastattn._emu.cuda  the same kernels compiled by nvcc (when built with CUDA)
// Arguments are raw data pointers (tensor.data_ptr()) and sizes; tests/test_primitives.py
// wraps them. Every emulated call takes `seed` (the schedule, emu::Schedule::from_seed) and
// `workers` (OS threads; 0 = default); the CUDA backend ignores both. Built only with
// -DFASTATTN_EMU=ON, never shipped in release wheels.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <vector>

#include <pybind11/stl.h>

#include "emu/test_kernels.h"
#include "fastattn/device/emu_runtime.h"

namespace py = pybind11;
namespace pt = fastattn::primtest;
namespace emu = fastattn::emu;

namespace {

struct Runners {
  bool emulated;
#define FA_RUNNER_FIELD(name, Args) void (*name)(const pt::Args&);
  FA_RUNNER_FIELD(index, IndexArgs)
  FA_RUNNER_FIELD(mma, MmaArgs)
  FA_RUNNER_FIELD(shfl, ShflArgs)
  FA_RUNNER_FIELD(vote, VoteArgs)
  FA_RUNNER_FIELD(ldmatrix, LdmatrixArgs)
  FA_RUNNER_FIELD(cp_async, CpAsyncArgs)
  FA_RUNNER_FIELD(reduce, ReduceArgs)
  FA_RUNNER_FIELD(atomics, AtomicArgs)
  FA_RUNNER_FIELD(math, MathArgs)
  FA_RUNNER_FIELD(fp8, Fp8Args)
  FA_RUNNER_FIELD(misuse, MisuseArgs)
  FA_RUNNER_FIELD(smem_poison, SmemPoisonArgs)
  FA_RUNNER_FIELD(wgmma, WgmmaArgs)
  FA_RUNNER_FIELD(tma, TmaArgs)
  FA_RUNNER_FIELD(tma_store, TmaStoreArgs)
  FA_RUNNER_FIELD(pipeline, PipelineArgs)
  FA_RUNNER_FIELD(named_barrier, NamedBarrierArgs)
  FA_RUNNER_FIELD(hopper_misuse, HopperMisuseArgs)
#undef FA_RUNNER_FIELD
};

#define FA_RUNNERS_OF(ns, is_emulated)                                                      \
  Runners {                                                                                 \
    is_emulated, ns::run_index, ns::run_mma, ns::run_shfl, ns::run_vote, ns::run_ldmatrix,  \
        ns::run_cp_async, ns::run_reduce, ns::run_atomics, ns::run_math, ns::run_fp8,       \
        ns::run_misuse, ns::run_smem_poison, ns::run_wgmma, ns::run_tma, ns::run_tma_store, \
        ns::run_pipeline, ns::run_named_barrier, ns::run_hopper_misuse                      \
  }

template <class T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

// Runs one kernel without the GIL, under the requested schedule when emulated.
template <class Args>
void run(const Runners& r, void (*fn)(const Args&), const Args& args, uint64_t seed,
         int workers) {
  py::gil_scoped_release nogil;
  if (r.emulated) {
    emu::Options o = emu::options();
    o.schedule = emu::Schedule::from_seed(seed);
    o.num_workers = workers;
    emu::ScopedOptions scoped(o);
    fn(args);
  } else {
    fn(args);
  }
}

// TmaBox from a dict of its field names (lists for the per-dimension ones; oob_nan optional).
pt::TmaBox tma_box(const py::dict& k) {
  pt::TmaBox t{};
  t.global = ptr<void>(k["global"].cast<uintptr_t>());
  t.type = k["type"].cast<int>();
  t.rank = k["rank"].cast<int>();
  const auto dims = k["dims"].cast<std::vector<uint64_t>>();
  const auto strides = k["strides"].cast<std::vector<uint64_t>>();
  const auto box = k["box"].cast<std::vector<uint32_t>>();
  const auto coords = k["coords"].cast<std::vector<int32_t>>();
  for (size_t i = 0; i < 5; ++i) {
    t.dims[i] = i < dims.size() ? dims[i] : 0;
    t.strides[i] = i < strides.size() ? strides[i] : 0;
    t.box[i] = i < box.size() ? box[i] : 0;
    t.coords[i] = i < coords.size() ? coords[i] : 0;
  }
  t.swizzle = k["swizzle"].cast<int>();
  t.oob_nan = k.contains("oob_nan") ? k["oob_nan"].cast<int>() : 0;
  return t;
}

void bind_backend(py::module_ m, Runners r) {
  const auto seed = py::arg("seed") = 0;
  const auto workers = py::arg("workers") = 0;

  m.def(
      "index",
      [r](uintptr_t out, py::tuple grid, py::tuple block, uint64_t s, int w) {
        pt::IndexArgs a{ptr<uint32_t>(out), {}, {}};
        for (int i = 0; i < 3; ++i) {
          a.grid[i] = grid[i].cast<unsigned>();
          a.block[i] = block[i].cast<unsigned>();
        }
        run(r, r.index, a, s, w);
      },
      py::arg("out"), py::arg("grid"), py::arg("block"), seed, workers,
      "Writes threadIdx, blockIdx, blockDim, gridDim, rank, lane, warp: out [threads, 16].");

  m.def(
      "mma",
      [r](uintptr_t a, uintptr_t b, uintptr_t c, uintptr_t d, int problems, bool bf16,
          bool via_ldmatrix, uint64_t s, int w) {
        pt::MmaArgs args{ptr<const uint16_t>(a), ptr<const uint16_t>(b), ptr<const float>(c),
                         ptr<float>(d), problems, bf16, via_ldmatrix};
        run(r, r.mma, args, s, w);
      },
      py::arg("a"), py::arg("b"), py::arg("c"), py::arg("d"), py::arg("problems"),
      py::arg("bf16"), py::arg("via_ldmatrix"), seed, workers,
      "d[p] = a[p] @ b[p] + c[p] with mma.sync m16n8k16; a [P,16,16], b [P,16,8] 16-bit, "
      "c, d [P,16,8] fp32.");

  m.def(
      "shfl",
      [r](uintptr_t in, uintptr_t arg, uintptr_t out, int threads, int mode, int width,
          bool wide, uint64_t s, int w) {
        pt::ShflArgs a{ptr<const void>(in), ptr<const int32_t>(arg), ptr<void>(out), threads,
                       mode, width, wide};
        run(r, r.shfl, a, s, w);
      },
      py::arg("inp"), py::arg("arg"), py::arg("out"), py::arg("threads"), py::arg("mode"),
      py::arg("width"), py::arg("wide"), seed, workers,
      "out[i] = shfl_<mode>(inp[i], arg[i], width); mode 0 up, 1 down, 2 xor, 3 idx.");

  m.def(
      "vote",
      [r](uintptr_t pred, uintptr_t out, int threads, uint64_t s, int w) {
        pt::VoteArgs a{ptr<const int32_t>(pred), ptr<uint32_t>(out), threads};
        run(r, r.vote, a, s, w);
      },
      py::arg("pred"), py::arg("out"), py::arg("threads"), seed, workers,
      "out [threads, 3] = ballot, any, all of pred over each warp.");

  m.def(
      "ldmatrix",
      [r](uintptr_t tile, int tile_elems, uintptr_t offsets, uintptr_t out, int num, bool trans,
          uint64_t s, int w) {
        pt::LdmatrixArgs a{ptr<const uint16_t>(tile), tile_elems, ptr<const int32_t>(offsets),
                           ptr<uint32_t>(out), num, trans};
        run(r, r.ldmatrix, a, s, w);
      },
      py::arg("tile"), py::arg("tile_elems"), py::arg("offsets"), py::arg("out"),
      py::arg("num"), py::arg("trans"), seed, workers,
      "Lane l loads from smem + offsets[l]; out [32, num] holds each lane's registers.");

  m.def(
      "cp_async",
      [r](uintptr_t src, uintptr_t out, int tiles, int threads, int mode, int flags,
          int src_bytes, uint64_t s, int w) {
        pt::CpAsyncArgs a{ptr<const uint8_t>(src), ptr<uint8_t>(out), tiles, threads, mode, flags,
                          src_bytes};
        run(r, r.cp_async, a, s, w);
      },
      py::arg("src"), py::arg("out"), py::arg("tiles"), py::arg("threads"), py::arg("mode"),
      py::arg("flags"), py::arg("src_bytes"), seed, workers,
      "cp.async pipeline (mode 0) or wait_group probe (mode 1); see test_kernels.h.");

  m.def(
      "reduce",
      [r](uintptr_t in, uintptr_t out, int rows, int threads, int barrier, uint64_t s, int w) {
        pt::ReduceArgs a{ptr<const float>(in), ptr<float>(out), rows, threads, barrier};
        run(r, r.reduce, a, s, w);
      },
      py::arg("inp"), py::arg("out"), py::arg("rows"), py::arg("threads"), py::arg("barrier"),
      seed, workers,
      "Shared-memory tree sum of each row; barrier 0: sync_block, 1: none, 2: sync_warp.");

  m.def(
      "atomics",
      [r](uintptr_t in, int blocks, int threads, uintptr_t fsum, uintptr_t isum, uintptr_t imax,
          uintptr_t imin, uintptr_t bits, uintptr_t block_counts, uintptr_t cas_slot,
          uintptr_t cas_wins, uintptr_t exch, uint64_t s, int w) {
        pt::AtomicArgs a{ptr<const int32_t>(in), blocks,          threads,
                         ptr<float>(fsum),       ptr<int32_t>(isum), ptr<int32_t>(imax),
                         ptr<int32_t>(imin),     ptr<uint32_t>(bits), ptr<int32_t>(block_counts),
                         ptr<int32_t>(cas_slot), ptr<int32_t>(cas_wins), ptr<int32_t>(exch)};
        run(r, r.atomics, a, s, w);
      },
      py::arg("inp"), py::arg("blocks"), py::arg("threads"), py::arg("fsum"), py::arg("isum"),
      py::arg("imax"), py::arg("imin"), py::arg("bits"), py::arg("block_counts"),
      py::arg("cas_slot"), py::arg("cas_wins"), py::arg("exch"), seed, workers);

  m.def(
      "math",
      [r](uintptr_t x, int n, uintptr_t to_f16, uintptr_t to_bf16, uintptr_t pack_f16,
          uintptr_t pack_bf16, uintptr_t unpack_f16, uintptr_t unpack_bf16, uintptr_t exp2,
          uintptr_t rcp, uintptr_t tanh, uintptr_t bits, int nbits, uintptr_t f16_to_f32,
          uintptr_t bf16_to_f32, uint64_t s, int w) {
        pt::MathArgs a{ptr<const float>(x),     n,
                       ptr<uint16_t>(to_f16),   ptr<uint16_t>(to_bf16),
                       ptr<uint32_t>(pack_f16), ptr<uint32_t>(pack_bf16),
                       ptr<float>(unpack_f16),  ptr<float>(unpack_bf16),
                       ptr<float>(exp2),        ptr<float>(rcp),
                       ptr<float>(tanh),        ptr<const uint16_t>(bits),
                       nbits,                   ptr<float>(f16_to_f32),
                       ptr<float>(bf16_to_f32)};
        run(r, r.math, a, s, w);
      },
      py::arg("x"), py::arg("n"), py::arg("to_f16"), py::arg("to_bf16"), py::arg("pack_f16"),
      py::arg("pack_bf16"), py::arg("unpack_f16"), py::arg("unpack_bf16"), py::arg("exp2"),
      py::arg("rcp"), py::arg("tanh"), py::arg("bits"), py::arg("nbits"),
      py::arg("f16_to_f32"), py::arg("bf16_to_f32"), seed, workers);

  m.def(
      "fp8",
      [r](bool e5m2, uintptr_t codes, int ncodes, uintptr_t wide16, uintptr_t wide32,
          uintptr_t x, int nx, uintptr_t narrow, uint64_t s, int w) {
        pt::Fp8Args a{e5m2,
                      ptr<const uint8_t>(codes),
                      ncodes,
                      ptr<uint16_t>(wide16),
                      ptr<float>(wide32),
                      ptr<const float>(x),
                      nx,
                      ptr<uint8_t>(narrow)};
        run(r, r.fp8, a, s, w);
      },
      py::arg("e5m2"), py::arg("codes"), py::arg("ncodes"), py::arg("wide16"),
      py::arg("wide32"), py::arg("x"), py::arg("nx"), py::arg("narrow"), seed, workers,
      "fp8 conversions: codes [n] -> wide16 [8, n] fp16/bf16 bits, wide32 [3, n]; "
      "x [nx] -> narrow [3, nx] codes (rows: see Fp8Args in test_kernels.h).");

  m.def(
      "misuse",
      [r](int kind, uintptr_t scratch, uint64_t s, int w) {
        pt::MisuseArgs a{kind, ptr<float>(scratch)};
        run(r, r.misuse, a, s, w);
      },
      py::arg("kind"), py::arg("scratch"), seed, workers,
      "Kernels that misuse a primitive (kind 1..10; 0 is correct); scratch: float[1024].");

  m.def(
      "smem_poison",
      [r](uintptr_t out, int blocks, int threads, uint64_t s, int w) {
        pt::SmemPoisonArgs a{ptr<uint32_t>(out), blocks, threads};
        run(r, r.smem_poison, a, s, w);
      },
      py::arg("out"), py::arg("blocks"), py::arg("threads"), seed, workers,
      "out [blocks, threads, 2]: static and dynamic shared memory read before any write.");

  // Hopper primitives (test_kernels_sm90.cuh). Structured arguments come as dicts of the
  // WgmmaArgs / TmaArgs field names; pointers as integers.
  m.def(
      "wgmma",
      [r](py::dict k, uint64_t s, int w) {
        pt::WgmmaArgs a{};
        a.a_image = ptr<const uint8_t>(k["a_image"].cast<uintptr_t>());
        a.a_bytes = k["a_bytes"].cast<int>();
        a.a_regs = ptr<const uint32_t>(k["a_regs"].cast<uintptr_t>());
        a.b_image = ptr<const uint8_t>(k["b_image"].cast<uintptr_t>());
        a.b_bytes = k["b_bytes"].cast<int>();
        a.b_offset = k["b_offset"].cast<int>();
        a.c = ptr<const float>(k["c"].cast<uintptr_t>());
        a.d = ptr<float>(k["d"].cast<uintptr_t>());
        a.n = k["n"].cast<int>();
        a.bf16 = k["bf16"].cast<int>();
        a.rs = k["rs"].cast<int>();
        a.major_a = k["major_a"].cast<int>();
        a.major_b = k["major_b"].cast<int>();
        a.swizzle_a = k["swizzle_a"].cast<int>();
        a.swizzle_b = k["swizzle_b"].cast<int>();
        a.lbo_a = k["lbo_a"].cast<uint32_t>();
        a.sbo_a = k["sbo_a"].cast<uint32_t>();
        a.lbo_b = k["lbo_b"].cast<uint32_t>();
        a.sbo_b = k["sbo_b"].cast<uint32_t>();
        a.k_steps = k["k_steps"].cast<int>();
        a.a_step = k["a_step"].cast<uint32_t>();
        a.b_step = k["b_step"].cast<uint32_t>();
        a.accumulate = k["accumulate"].cast<int>();
        a.flags = k["flags"].cast<int>();
        run(r, r.wgmma, a, s, w);
      },
      py::arg("args"), seed, workers,
      "One warpgroup: d = a @ b + c (64 x n) with wgmma from shared-memory images, registers "
      "in and out raw; see WgmmaArgs in test_kernels.h.");

  m.def(
      "tma",
      [r](py::dict k, uint64_t s, int w) {
        pt::TmaArgs a{};
        a.t = tma_box(k);
        a.loads = k["loads"].cast<int>();
        a.out = ptr<uint8_t>(k["out"].cast<uintptr_t>());
        a.flags = k["flags"].cast<int>();
        run(r, r.tma, a, s, w);
      },
      py::arg("args"), seed, workers,
      "TMA box loads through one mbarrier; out [loads, box bytes]; see TmaArgs.");

  m.def(
      "tma_store",
      [r](py::dict k, uint64_t s, int w) {
        pt::TmaStoreArgs a{};
        a.t = tma_box(k);
        a.image = ptr<const uint8_t>(k["image"].cast<uintptr_t>());
        a.overwrite = k["overwrite"].cast<int>();
        run(r, r.tma_store, a, s, w);
      },
      py::arg("args"), seed, workers,
      "TMA store of a shared-memory box image into global; see TmaStoreArgs.");

  m.def(
      "pipeline",
      [r](uintptr_t in, uintptr_t out, int tiles, int stages, int flags, uint64_t s, int w) {
        pt::PipelineArgs a{ptr<const float>(in), ptr<float>(out), tiles, stages, flags};
        run(r, r.pipeline, a, s, w);
      },
      py::arg("inp"), py::arg("out"), py::arg("tiles"), py::arg("stages"), py::arg("flags"),
      seed, workers, "Producer/consumer TMA ring: out [tiles, 32, 32] = inp.");

  m.def(
      "named_barrier",
      [r](uintptr_t in, uintptr_t out, int rounds, bool skip_sync, uint64_t s, int w) {
        pt::NamedBarrierArgs a{ptr<const float>(in), ptr<float>(out), rounds, skip_sync};
        run(r, r.named_barrier, a, s, w);
      },
      py::arg("inp"), py::arg("out"), py::arg("rounds"), py::arg("skip_sync"), seed, workers,
      "Named-barrier handoff: out[r, i] = inp[r, (i + 1) % 64].");

  m.def(
      "hopper_misuse",
      [r](int kind, uintptr_t scratch, uint64_t s, int w) {
        pt::HopperMisuseArgs a{kind, ptr<float>(scratch)};
        run(r, r.hopper_misuse, a, s, w);
      },
      py::arg("kind"), py::arg("scratch"), seed, workers,
      "Kernels that misuse a Hopper primitive (kind 1..12; 0 is correct); scratch: float[1024].");
}

}  // namespace

PYBIND11_MODULE(_emu, m) {
  m.doc() = "fastattn test-only module: device-primitive test kernels, emulated and on CUDA";
  m.def(
      "schedule", [](uint64_t seed) { return emu::Schedule::from_seed(seed).describe(); },
      py::arg("seed"), "The emulation schedule a seed selects, in words.");

  bind_backend(m.def_submodule("emu", "the CPU emulation"), FA_RUNNERS_OF(pt::emulated, true));
#if defined(FASTATTN_EMU_WITH_CUDA)
  bind_backend(m.def_submodule("cuda", "the same kernels compiled by nvcc"),
               FA_RUNNERS_OF(pt::gpu, false));
  m.attr("has_cuda") = true;
#else
  m.attr("has_cuda") = false;
#endif
}
