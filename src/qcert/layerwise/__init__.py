"""Lipschitz-guided layer-wise quantization of adversarially trained float networks (qcert's own
design after arXiv 2110.12308; see docs/layerwise.md)."""

from __future__ import annotations
