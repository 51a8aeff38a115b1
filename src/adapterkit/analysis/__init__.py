"""Analysis tools: how tuning changes a model (representational similarity per layer), learning-rate
sweeps, per-epoch dev curves and cross-lingual zero-shot evaluation."""
from __future__ import annotations

from .similarity import CKAStats, RSAResult, linear_cka, rsa

__all__ = ["CKAStats", "RSAResult", "linear_cka", "rsa"]
