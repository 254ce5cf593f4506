"""Continuous-batching inference on fastattn's paged KV cache: `python -m fastattn.demo`.

See demo/cli.py for what it serves and checks; demo/engine.py is the scheduler,
demo/models.py the decoders (SmolLM2 through transformers, a seeded random Llama),
demo/checks.py the references.
"""

from fastattn._dtypes import DTYPES
from fastattn.demo.cli import (CHAT_REQUESTS, SMOLLM2_TOLERANCES, TOLERANCES, DemoConfig,
                               DemoReport, demo_dtype, main, make_requests, run)
from fastattn.demo.engine import Engine, Request
from fastattn.demo.models import ModelConfig, ModelUnavailable, TinyLlama

__all__ = ["CHAT_REQUESTS", "DTYPES", "SMOLLM2_TOLERANCES", "TOLERANCES", "DemoConfig",
           "DemoReport", "Engine", "ModelConfig", "ModelUnavailable", "Request", "TinyLlama",
           "demo_dtype", "main", "make_requests", "run"]
