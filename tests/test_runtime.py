"""Torch runtime helpers: the device a job runs on, GPU-only defaults, compiled models cached."""

from __future__ import annotations

import pytest
import torch

from vstain_dask.errors import InputError
from vstain_dask.runtime import (
    compiled,
    compiled_or_eager,
    default_device,
    on_for_cuda,
    resolve_device,
)


def test_auto_and_none_pick_cuda_only_where_it_is():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert default_device() == expected
    assert resolve_device(None).type == expected
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_bad_device_names_the_parameter_and_the_value():
    with pytest.raises(InputError, match="device must be a torch device .* got 'gpu-please'"):
        resolve_device("gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="'cuda:1' was asked for but CUDA is not available"):
            resolve_device("cuda:1")


def test_gpu_settings_default_to_on_for_cuda_only():
    assert on_for_cuda(None, "cuda:0") is True
    assert on_for_cuda(None, torch.device("cpu")) is False
    assert on_for_cuda(True, "cpu") is True
    assert on_for_cuda(False, "cuda") is False


def test_a_model_is_compiled_once_per_backend():
    net = torch.nn.Conv2d(1, 2, 1)
    first = compiled(net, "eager")
    assert compiled(net, "eager") is first
    assert compiled(net, "aot_eager") is not first
    x = torch.ones(1, 1, 4, 4)
    with torch.inference_mode():
        assert torch.equal(first(x), net(x))
    assert compiled_or_eager(net) is compiled_or_eager(net)
    with pytest.raises(InputError, match="compile must be True, False or a torch.compile backend"):
        compiled(net, "no-such-backend")
