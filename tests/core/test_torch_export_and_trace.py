"""Export paths of a wrapped network: ``torch.export`` and ``torch.jit.trace`` match eager, and what a
graph capture leaves out (the eager NaN/Inf refusal; ``torch.jit.script`` of the wrapper)."""
from __future__ import annotations

import pytest
import torch


def _tiny_wrapped_nafnet():
    import warnings

    from constyle_plugin import ConStyleV2, wrap_unet
    from constyle_plugin.archs import NAFNet

    torch.manual_seed(0)
    net = wrap_unet(NAFNet(width=8, enc_blk_nums=[1, 1, 1, 1], dec_blk_nums=[1, 1, 1, 1], middle_blk_num=1),
                    prompter=ConStyleV2()).eval()
    with torch.no_grad():
        for p in net.injections.parameters():  # away from the zero-initialised identity
            p.normal_(0, 0.05)
    warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated.*")
    return net


def test_torch_export_and_jit_trace_of_a_wrapped_nafnet_match_eager():
    import warnings

    torch.set_num_threads(1)
    net = _tiny_wrapped_nafnet()
    x, other = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 48, 80)
    with torch.no_grad():
        eager, eager_other = net(x), net(other)
        exported = torch.export.export(net, (x,)).module()  # static shapes
        torch.testing.assert_close(exported(x), eager, rtol=1e-5, atol=1e-6)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(net, x, check_trace=False)
        torch.testing.assert_close(traced(x), eager, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(traced(other), eager_other, rtol=1e-5, atol=1e-6)
        # documented limits: a captured graph drops the eager NaN/Inf refusal, and TorchScript
        # scripting does not compile the wrapper's forward(*args, **kwargs)
        bad = x.clone()
        bad[0, 0, 0, 0] = float("nan")
        with pytest.raises(ValueError):
            net(bad)
        assert torch.isnan(exported(bad)).any() and torch.isnan(traced(bad)).any()
    with pytest.raises(Exception, match="variable number of arguments"):
        torch.jit.script(net)
