"""PagedKVCache: owner of a paged K/V cache and its page bookkeeping.

The paged ops (`fastattn.paged_attention`, `fastattn.append_kv`) take the cache as plain
tensors `[num_pages, page_size, kv_heads, head_dim]` plus an int32 block table and int32
sequence lengths. This module keeps the host-side state that produces those tensors: a
free-page list and, for each sequence, its pages and its length. All bookkeeping is Python
ints and lists; tensors are only built (one host-to-device copy each) when a step's inputs
are requested, so nothing here waits on the device.

Typical serving step::

    cache = PagedKVCache(num_pages=256, page_size=16, num_kv_heads=2, head_dim=64,
                         num_layers=4)
    sid = cache.add_sequence()
    batch = cache.prepare_batch([(sid, len(prompt_chunk)), (other_sid, 1)])
    for layer in range(4):
        ...                                           # q, k, v for batch.num_tokens tokens
        fastattn.append_kv(cache.k_cache(layer), cache.v_cache(layer), k, v,
                           batch.slot_mapping)
        out = fastattn.paged_attention(q, cache.k_cache(layer), cache.v_cache(layer),
                                       batch.block_table, batch.seq_lens,
                                       cu_seqlens_q=batch.cu_seqlens_q,
                                       max_seqlen_q=batch.max_seqlen_q)
    cache.free(sid)                                   # when the sequence is finished

An fp8 cache (`dtype=torch.float8_e4m3fn` or `torch.float8_e5m2`, with `k_scale` /
`v_scale`) stores K/V in fp8 while q, k, v keep their own dtype: `cache.append` quantizes
with the cache's scales, and `**cache.scales` hands them to `paged_attention`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Tuple

import torch

__all__ = ["PagedKVCache", "PagedBatch", "OutOfPagesError"]


class OutOfPagesError(RuntimeError):
    """Raised when a sequence cannot grow: too few free pages, or more pages than
    `max_pages_per_seq`. The cache is left exactly as it was."""


@dataclass(frozen=True)
class PagedBatch:
    """Inputs of one paged-attention step (chunked prefill and/or decode), built by
    `PagedKVCache.prepare_batch`. Tensors live on the cache's device; the host copies
    (`query_lens`, `seq_lens_host`) are there so a scheduler never has to read tensors back."""

    seq_ids: Tuple[int, ...]          # the batch's sequences, in batch order
    query_lens: Tuple[int, ...]       # new tokens of each sequence in this step
    seq_lens_host: Tuple[int, ...]    # keys per sequence after this step, new tokens included
    slot_mapping: torch.Tensor        # int64 [T]: cache slot of each new token, for append_kv
    positions: torch.Tensor           # int64 [T]: position of each new token in its sequence
    cu_seqlens_q: torch.Tensor        # int32 [B+1]: prefix sums of query_lens
    max_seqlen_q: int                 # max(query_lens), 0 for an empty batch
    block_table: torch.Tensor         # int32 [B, W]: pages of each sequence, padded
    seq_lens: torch.Tensor            # int32 [B]: same values as seq_lens_host

    @property
    def num_seqs(self) -> int:
        return len(self.seq_ids)

    @property
    def num_tokens(self) -> int:
        return sum(self.query_lens)

    @property
    def is_decode(self) -> bool:
        """True when every sequence has exactly one new token: the batch can then use the
        decode form of `paged_attention` (q `[B, Hq, D]`, no `cu_seqlens_q`)."""
        return len(self.query_lens) > 0 and all(n == 1 for n in self.query_lens)


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"PagedKVCache: {name} must be a positive int, got {value!r}")
    return value


class PagedKVCache:
    """Paged K/V cache for `num_layers` layers, with a free-page list and per-sequence
    page lists.

    Storage is one tensor for K and one for V, each `[num_layers, num_pages, page_size,
    num_kv_heads, head_dim]`; `k_cache(layer)` / `v_cache(layer)` are the contiguous
    `[num_pages, page_size, num_kv_heads, head_dim]` views the paged ops take. All layers
    share one page table: a page id addresses the same slots in every layer.

    A sequence's token `i` lives in page `pages[i // page_size]` at offset
    `i % page_size`, i.e. at slot `pages[i // page_size] * page_size + i % page_size`.
    Pages are allocated lowest id first from a fresh cache; freed pages are reused
    most-recently-freed first.

    `fill_value` initialises the storage (tests use NaN to prove that slots never written
    are never read). Pages returned to the free list keep their old contents.

    `dtype` is the storage dtype. With an fp8 dtype (float8_e4m3fn, float8_e5m2) the
    queries and the new keys/values keep their own dtype (the compute dtype), and
    `k_scale` / `v_scale` (None for 1.0, a positive float, or a float32 tensor `[]` or
    `[num_kv_heads]` on `device`) say how codes read: value = float(code) * scale.
    """

    def __init__(
        self,
        num_pages: int,
        page_size: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        num_layers: int = 1,
        dtype: torch.dtype = torch.float32,
        device="cpu",
        max_pages_per_seq: Optional[int] = None,
        fill_value: float = 0.0,
        k_scale=None,
        v_scale=None,
    ):
        self._num_pages = _check_positive_int("num_pages", num_pages)
        self._page_size = _check_positive_int("page_size", page_size)
        self._num_kv_heads = _check_positive_int("num_kv_heads", num_kv_heads)
        self._head_dim = _check_positive_int("head_dim", head_dim)
        self._num_layers = _check_positive_int("num_layers", num_layers)
        if max_pages_per_seq is None:
            max_pages_per_seq = num_pages
        self._max_pages_per_seq = _check_positive_int("max_pages_per_seq", max_pages_per_seq)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"PagedKVCache: dtype must be a floating torch.dtype, got {dtype!r}")

        shape = (num_layers, num_pages, page_size, num_kv_heads, head_dim)
        self._k = torch.full(shape, fill_value, dtype=dtype, device=device)
        self._v = torch.full(shape, fill_value, dtype=dtype, device=device)
        from ._checks import kv_scale  # the ops' own rule, with the same messages

        kv_scale("k_scale", k_scale, self._k[0])
        kv_scale("v_scale", v_scale, self._v[0])
        self._scales = {"k_scale": k_scale, "v_scale": v_scale}

        # A stack: pop() hands out page 0, 1, 2, ... from a fresh cache.
        self._free: list[int] = list(range(num_pages - 1, -1, -1))
        self._pages: dict[int, list[int]] = {}
        self._lens: dict[int, int] = {}
        self._next_id = 0
        self._peak_pages_used = 0

    # ------------------------------------------------------------------ storage

    @property
    def num_pages(self) -> int:
        return self._num_pages

    @property
    def page_size(self) -> int:
        return self._page_size

    @property
    def num_kv_heads(self) -> int:
        return self._num_kv_heads

    @property
    def head_dim(self) -> int:
        return self._head_dim

    @property
    def num_layers(self) -> int:
        return self._num_layers

    @property
    def max_pages_per_seq(self) -> int:
        return self._max_pages_per_seq

    @property
    def dtype(self) -> torch.dtype:
        return self._k.dtype

    @property
    def device(self) -> torch.device:
        return self._k.device

    @property
    def scales(self) -> dict:
        """`{"k_scale": ..., "v_scale": ...}` as given (None unless fp8), for
        `fastattn.paged_attention(..., **cache.scales)`."""
        return dict(self._scales)

    def _check_layer(self, layer: int) -> int:
        if (isinstance(layer, bool) or not isinstance(layer, int)
                or not 0 <= layer < self._num_layers):
            raise ValueError(
                f"PagedKVCache: layer must be an int in [0, {self._num_layers}), got {layer!r}")
        return layer

    def k_cache(self, layer: int = 0) -> torch.Tensor:
        """K storage of `layer`, a contiguous `[num_pages, page_size, num_kv_heads, head_dim]`."""
        return self._k[self._check_layer(layer)]

    def v_cache(self, layer: int = 0) -> torch.Tensor:
        """V storage of `layer`, a contiguous `[num_pages, page_size, num_kv_heads, head_dim]`."""
        return self._v[self._check_layer(layer)]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor,
               slot_mapping: torch.Tensor) -> None:
        """Write `k`, `v` `[T, num_kv_heads, head_dim]` into `layer` at `slot_mapping`
        (int64 `[T]`, as returned by `extend` or `prepare_batch`); `fastattn.append_kv`."""
        from . import append_kv  # lazy: fastattn/__init__ imports this module

        append_kv(self.k_cache(layer), self.v_cache(layer), k, v, slot_mapping, **self._scales)

    # ------------------------------------------------------------------ pages

    @property
    def num_free_pages(self) -> int:
        return len(self._free)

    @property
    def pages_used(self) -> int:
        return self._num_pages - len(self._free)

    @property
    def peak_pages_used(self) -> int:
        """Most pages ever held at once since construction (or the last `reset`)."""
        return self._peak_pages_used

    def pages_for(self, num_tokens: int) -> int:
        """Pages that hold `num_tokens` tokens: ceil(num_tokens / page_size)."""
        return -(-num_tokens // self._page_size)

    # ------------------------------------------------------------------ sequences

    @property
    def seq_ids(self) -> list:
        """Live sequence ids, in the order they were added."""
        return list(self._lens)

    def __contains__(self, seq_id) -> bool:
        return seq_id in self._lens

    def __len__(self) -> int:
        return len(self._lens)

    def _check_seq(self, seq_id) -> int:
        if seq_id not in self._lens:
            raise ValueError(f"PagedKVCache: unknown sequence id {seq_id!r}")
        return seq_id

    @staticmethod
    def _check_count(name: str, n) -> int:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"PagedKVCache: {name} must be a non-negative int, got {n!r}")
        return n

    def add_sequence(self, seq_id: Optional[int] = None) -> int:
        """Register a new, empty sequence (no pages yet) and return its id. Ids are
        assigned 0, 1, 2, ... unless `seq_id` names one, which must not be live."""
        if seq_id is None:
            while self._next_id in self._lens:
                self._next_id += 1
            seq_id = self._next_id
            self._next_id += 1
        else:
            if isinstance(seq_id, bool) or not isinstance(seq_id, int):
                raise ValueError(f"PagedKVCache: seq_id must be an int, got {seq_id!r}")
            if seq_id in self._lens:
                raise ValueError(f"PagedKVCache: sequence id {seq_id} is already live")
        self._lens[seq_id] = 0
        self._pages[seq_id] = []
        return seq_id

    def seq_len(self, seq_id: int) -> int:
        """Tokens reserved by `seq_id` (every token `extend` has added)."""
        return self._lens[self._check_seq(seq_id)]

    def pages(self, seq_id: int) -> list:
        """Page ids of `seq_id`, in token order (a copy)."""
        return list(self._pages[self._check_seq(seq_id)])

    def pages_needed(self, seq_id: int, n: int) -> int:
        """Pages `extend(seq_id, n)` would take from the free list."""
        self._check_count("n", n)
        seq_len = self._lens[self._check_seq(seq_id)]
        return self.pages_for(seq_len + n) - len(self._pages[seq_id])

    def can_extend(self, seq_id: int, n: int) -> bool:
        """Whether `extend(seq_id, n)` would succeed."""
        need = self.pages_needed(seq_id, n)
        return (need <= len(self._free)
                and len(self._pages[seq_id]) + need <= self._max_pages_per_seq)

    def _plan(self, requests: Sequence[Tuple[int, int]]) -> int:
        """Validate a list of (seq_id, n) growths and return the pages they take together.
        Raises before anything changes."""
        seen = set()
        total = 0
        for seq_id, n in requests:
            self._check_seq(seq_id)
            self._check_count("number of new tokens", n)
            if seq_id in seen:
                raise ValueError(f"PagedKVCache: sequence {seq_id} appears twice in one batch")
            seen.add(seq_id)
            have = len(self._pages[seq_id])
            want = self.pages_for(self._lens[seq_id] + n)
            if want > self._max_pages_per_seq:
                raise OutOfPagesError(
                    f"PagedKVCache: sequence {seq_id} would need {want} pages for "
                    f"{self._lens[seq_id] + n} tokens, more than max_pages_per_seq="
                    f"{self._max_pages_per_seq}")
            total += want - have
        if total > len(self._free):
            raise OutOfPagesError(
                f"PagedKVCache: out of pages: {total} more needed, {len(self._free)} free "
                f"of {self._num_pages}")
        return total

    def _grow(self, seq_id: int, n: int) -> list:
        """Reserve n tokens (already validated); return their slots as a list of ints."""
        start = self._lens[seq_id]
        pages = self._pages[seq_id]
        stop = start + n
        while len(pages) * self._page_size < stop:
            pages.append(self._free.pop())
        self._lens[seq_id] = stop
        self._peak_pages_used = max(self._peak_pages_used, self.pages_used)
        return self._slots(pages, start, stop)

    def _slots(self, pages: list, start: int, stop: int) -> list:
        ps = self._page_size
        return [pages[i // ps] * ps + i % ps for i in range(start, stop)]

    def extend(self, seq_id: int, n: int) -> torch.Tensor:
        """Reserve `n` more tokens for `seq_id`, taking pages from the free list as needed,
        and return their slots: int64 `[n]` on the cache's device, ready for `append_kv`.
        Raises `OutOfPagesError` (a RuntimeError) without any change if pages run out."""
        self._plan([(seq_id, n)])
        return torch.tensor(self._grow(seq_id, n), dtype=torch.int64, device=self.device)

    def slot_mapping(self, seq_id: int, start: int = 0,
                     stop: Optional[int] = None) -> torch.Tensor:
        """Slots of tokens `[start, stop)` of `seq_id` (already reserved), int64 on device."""
        seq_len = self.seq_len(seq_id)
        stop = seq_len if stop is None else stop
        if not 0 <= start <= stop <= seq_len:
            raise ValueError(
                f"PagedKVCache: token range [{start}, {stop}) is outside sequence {seq_id} "
                f"of length {seq_len}")
        return torch.tensor(self._slots(self._pages[seq_id], start, stop),
                            dtype=torch.int64, device=self.device)

    def truncate(self, seq_id: int, new_len: int) -> None:
        """Shorten `seq_id` to `new_len` tokens (e.g. rejected speculative tokens) and
        return the pages it no longer needs to the free list."""
        self._check_count("new_len", new_len)
        seq_len = self.seq_len(seq_id)
        if new_len > seq_len:
            raise ValueError(
                f"PagedKVCache: cannot truncate sequence {seq_id} of length {seq_len} "
                f"to {new_len} tokens")
        pages = self._pages[seq_id]
        keep = self.pages_for(new_len)
        self._free.extend(reversed(pages[keep:]))
        del pages[keep:]
        self._lens[seq_id] = new_len

    def free(self, seq_id: int) -> None:
        """Forget `seq_id` and return all its pages to the free list."""
        self._check_seq(seq_id)
        self._free.extend(reversed(self._pages.pop(seq_id)))
        del self._lens[seq_id]

    def reset(self) -> None:
        """Free every sequence and reset the page-use peak (storage is not cleared)."""
        self._pages.clear()
        self._lens.clear()
        self._free = list(range(self._num_pages - 1, -1, -1))
        self._next_id = 0
        self._peak_pages_used = 0

    # ------------------------------------------------------------------ op inputs

    def seq_lens(self, seq_ids: Iterable[int]) -> torch.Tensor:
        """int32 `[B]` lengths of `seq_ids`, on the cache's device."""
        lens = [self.seq_len(s) for s in seq_ids]
        return torch.tensor(lens, dtype=torch.int32, device=self.device)

    def block_table(self, seq_ids: Iterable[int], *, width: Optional[int] = None,
                    pad_value: int = 0) -> torch.Tensor:
        """int32 `[B, width]` block table of `seq_ids`, on the cache's device. Row b lists
        the pages of `seq_ids[b]`, then `pad_value` (never read by the paged ops: they only
        use the first ceil(seq_len / page_size) entries of a row). `width` defaults to the
        most pages any of these sequences holds (at least 1); pass `max_pages_per_seq` for
        a shape that never changes (CUDA graphs)."""
        rows = [self._pages[self._check_seq(s)] for s in seq_ids]
        need = max((len(r) for r in rows), default=0)
        if width is None:
            width = max(need, 1)
        elif isinstance(width, bool) or not isinstance(width, int) or width < need:
            raise ValueError(
                f"PagedKVCache: block_table width must be an int >= {need} (the most pages "
                f"one of these sequences holds), got {width!r}")
        flat = []
        for r in rows:
            flat.extend(r)
            flat.extend([pad_value] * (width - len(r)))
        return torch.tensor(flat, dtype=torch.int32, device=self.device).view(len(rows), width)

    def prepare_batch(self, requests: Sequence[Tuple[int, int]], *,
                      block_table_width: Optional[int] = None,
                      pad_value: int = 0) -> PagedBatch:
        """Reserve the new tokens of one step and build the paged ops' inputs.

        `requests` lists `(seq_id, n_new_tokens)`; a sequence appears at most once, with
        `n_new_tokens >= 0` (a prefill chunk, or 1 for decode). All sequences grow, or
        none does: on `OutOfPagesError` / `ValueError` the cache is unchanged. The new
        tokens of the batch are packed in request order; `slot_mapping` and `positions`
        give their cache slots and their positions within their sequences.
        """
        requests = [tuple(r) for r in requests]
        self._plan(requests)
        slots, positions, query_lens, lens, cu = [], [], [], [], [0]
        for seq_id, n in requests:
            start = self._lens[seq_id]
            slots.extend(self._grow(seq_id, n))
            positions.extend(range(start, start + n))
            query_lens.append(n)
            lens.append(start + n)
            cu.append(cu[-1] + n)
        seq_ids = tuple(s for s, _ in requests)
        dev = self.device
        return PagedBatch(
            seq_ids=seq_ids,
            query_lens=tuple(query_lens),
            seq_lens_host=tuple(lens),
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            positions=torch.tensor(positions, dtype=torch.int64, device=dev),
            cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=dev),
            max_seqlen_q=max(query_lens, default=0),
            block_table=self.block_table(seq_ids, width=block_table_width, pad_value=pad_value),
            seq_lens=torch.tensor(lens, dtype=torch.int32, device=dev),
        )

    def __repr__(self) -> str:
        return (f"PagedKVCache(num_pages={self._num_pages}, page_size={self._page_size}, "
                f"num_kv_heads={self._num_kv_heads}, head_dim={self._head_dim}, "
                f"num_layers={self._num_layers}, dtype={self.dtype}, device={self.device}, "
                f"sequences={len(self._lens)}, pages_used={self.pages_used})")
