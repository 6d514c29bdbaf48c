"""Fixtures of the export tests."""

import pytest
import torch
from fake_cslt import CALLS, _Lt, compress, sparse_mm


@pytest.fixture
def fake_cslt(monkeypatch):
    """Patch torch's cuSPARSELt entry points with the CPU fake; clears the shared config cache."""
    from lottery.export import cslt

    monkeypatch.setattr(torch, "_cslt_compress", compress, raising=False)
    monkeypatch.setattr(torch, "_cslt_sparse_mm", sparse_mm, raising=False)
    monkeypatch.setattr(torch._C, "_cusparselt", _Lt, raising=False)
    monkeypatch.setattr(cslt, "_SHARED", {})
    CALLS["search"] = 0
    return CALLS
