from __future__ import annotations

import pytest
import torch

from service.engine.platform import cpu_bf16_speedup, resolve_device, resolve_dtype


def test_auto_dtype_on_cpu_follows_the_measured_bf16_speed():
    expected = torch.bfloat16 if cpu_bf16_speedup() >= 1.5 else torch.float32
    assert resolve_dtype("auto", torch.device("cpu")) == expected


@pytest.mark.parametrize(("name", "dtype"), [("float32", torch.float32), ("bfloat16", torch.bfloat16),
                                             ("float64", torch.float64)])
def test_explicit_dtypes(name, dtype):
    assert resolve_dtype(name, torch.device("cpu")) == dtype


def test_device_auto_and_missing_cuda():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
