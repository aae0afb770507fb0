"""The choice of DCN kernel (centernet/model/dcn_kernels.py): torchvision's
deform_conv2d where it imports and agrees with ours, ours otherwise.

torchvision does not import beside this CPU torch, so these tests put a fake
`torchvision.ops.deform_conv2d` on the path: one that follows torchvision's
documented conventions (argument order; offset (N, 2*offset_groups*kh*kw, Ho,
Wo) as (dy, dx) pairs per tap; mask (N, offset_groups*kh*kw, Ho, Wo); no
mask = DCNv1) and computes with our kernel. The argument mapping is then
tested for real; torchvision's own arithmetic is checked on the device by the
agreement probe itself (and by benchmarks/gpu_torch.py)."""
import sys
import textwrap

import numpy as np
import pytest
import torch

from centernet.model.dcn_kernels import (AGREE_REL, KernelDCN, agreement, ours, probe_case, select_kernel,
                                   torchvision_kernel)
from centernet.errors import UserError
from centernet.runtime.torch_session import TorchOptions, TorchSession
from conftest import ROOT, assert_parity, photo_inputs

FAKE_OPS = '''
import torch
from torch.nn.modules.utils import _pair
from dcn_v2 import modulated_deform_conv2d

SWAP_XY = {swap}


def deform_conv2d(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    n, c, h, w = input.shape
    out_c, c_per_group, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    offset_groups = offset.shape[1] // (2 * kh * kw)
    if offset.shape != (n, 2 * offset_groups * kh * kw, ho, wo):
        raise RuntimeError(f"offset shape {{tuple(offset.shape)}} does not fit")
    if mask is None:  # DCNv1
        mask = torch.ones(n, offset_groups * kh * kw, ho, wo, dtype=input.dtype, device=input.device)
    if mask.shape != (n, offset_groups * kh * kw, ho, wo):
        raise RuntimeError(f"mask shape {{tuple(mask.shape)}} does not fit")
    if c != c_per_group or offset_groups != 1:
        raise NotImplementedError("this fake does groups = offset_groups = 1 only")
    # Channels are (offset group, tap i*kw + j, (dy, dx)).
    pairs = offset.reshape(n, offset_groups, kh * kw, 2, ho, wo)[:, 0]
    dy, dx = pairs[:, :, 0], pairs[:, :, 1]
    if SWAP_XY:  # a library with the other convention
        dy, dx = dx, dy
    ours = torch.stack([dy, dx], dim=2).reshape(n, 2 * kh * kw, ho, wo)
    if bias is None:
        bias = torch.zeros(out_c, dtype=input.dtype, device=input.device)
    return modulated_deform_conv2d(input, ours, mask, weight, bias, (sh, sw), (ph, pw), (dh, dw))
'''


def _forget_torchvision():
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


@pytest.fixture
def fake_torchvision(tmp_path, monkeypatch):
    """install(kind): kind "good" (torchvision's conventions), "swapped" (x
    before y) or "broken" (import fails like PyPI's wheel beside the CPU torch)."""
    def install(kind):
        pkg = tmp_path / kind / "torchvision"
        (pkg / "ops").mkdir(parents=True)
        if kind == "broken":
            (pkg / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
        else:
            (pkg / "__init__.py").write_text("from . import ops\n")
            (pkg / "ops" / "__init__.py").write_text(textwrap.dedent(FAKE_OPS.format(swap=kind == "swapped")))
        _forget_torchvision()
        monkeypatch.syspath_prepend(str(pkg.parent))
        monkeypatch.syspath_prepend(str(ROOT))
    yield install
    _forget_torchvision()


def test_adapter_maps_our_arguments_to_torchvisions(fake_torchvision):
    fake_torchvision("good")
    kernel, why = torchvision_kernel()
    assert why is None
    gen = torch.Generator().manual_seed(1)
    for stride, padding, dilation in (((1, 1), (1, 1), (1, 1)), ((2, 1), (1, 2), (1, 2))):
        x = torch.randn(2, 5, 11, 13, generator=gen)
        ho = (11 + 2 * padding[0] - 2 * dilation[0] - 1) // stride[0] + 1
        wo = (13 + 2 * padding[1] - 2 * dilation[1] - 1) // stride[1] + 1
        offset = torch.randn(2, 18, ho, wo, generator=gen) * 2.0
        mask = torch.rand(2, 9, ho, wo, generator=gen)
        weight, bias = torch.randn(4, 5, 3, 3, generator=gen), torch.randn(4, generator=gen)
        args = (x, offset, mask, weight, bias, stride, padding, dilation)
        assert torch.allclose(kernel(*args), ours(*args), atol=1e-5)


def test_auto_takes_torchvision_when_it_agrees(fake_torchvision, random_ctdet):
    fake_torchvision("good")
    name, kernel, note = select_kernel("auto", "cpu")
    assert name == "torchvision" and "agrees with ours" in note
    assert agreement(kernel, torch.device("cpu")) <= AGREE_REL
    # The whole network on it: the DCN layers run the library kernel, and the
    # outputs are those of the plain network.
    x = photo_inputs(1, (128, 128), seed=2)
    s = TorchSession(random_ctdet, TorchOptions(threads=1), input_size=(128, 128))
    assert s.info["dcn_kernel"] == "torchvision"
    assert all(m.kernel is not ours for m in s.model.modules() if isinstance(m, KernelDCN))
    with torch.no_grad():
        ref = [o.numpy() for o in random_ctdet(torch.from_numpy(x))]
    for name, got, r in zip("hm wh reg".split(), s.run_batch(x), ref):
        assert_parity(got, r, what=name)
    # bf16: the library kernel gets float32 arguments (sampling in fp32).
    low = TorchSession(random_ctdet, TorchOptions(threads=1, precision="bf16"), input_size=(128, 128))
    assert low.info["dcn_kernel"] == "torchvision" and all(np.isfinite(o).all() for o in low.run_batch(x))


def test_auto_falls_back_to_ours_when_torchvision_disagrees(fake_torchvision):
    fake_torchvision("swapped")
    name, kernel, note = select_kernel("auto", "cpu")
    assert name == "ours" and kernel is ours and "differs from ours" in note
    with pytest.raises(UserError, match="--dcn torchvision: torchvision's deform_conv2d differs"):
        select_kernel("torchvision", "cpu")


def test_auto_falls_back_silently_when_torchvision_is_broken(fake_torchvision, random_ctdet, capsys):
    fake_torchvision("broken")
    name, kernel, note = select_kernel("auto", "cpu")
    assert name == "ours" and "RuntimeError" in note and "torchvision::nms" in note
    s = TorchSession(random_ctdet, TorchOptions(threads=1), input_size=(64, 64))
    assert s.info["dcn_kernel"] == "ours"
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    with pytest.raises(UserError, match="does not import"):
        select_kernel("torchvision", "cpu")


def test_speed_comparison_picks_one_of_the_two(fake_torchvision):
    # On CUDA "auto" also times both on a 64-channel 128x128 layer; the fake is
    # ours with a little more work, so either may win on a busy CPU.
    fake_torchvision("good")
    name, kernel, note = select_kernel("auto", "cpu", compare_speed=True)
    assert name in ("ours", "torchvision") and "probe" in note and "vs ours" in note


def test_ours_needs_no_torchvision():
    name, kernel, note = select_kernel("ours", "cpu")
    assert name == "ours" and kernel is ours
    args = probe_case(torch.device("cpu"))
    assert ours(*args).shape == (2, 6, 12, 16)
