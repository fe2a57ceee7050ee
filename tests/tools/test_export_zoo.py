"""torch.export of torchvision architectures as `trainkit export` wraps them (normalisation
inside, grey input repeated to the 3-channel stem, dynamic batch), one model per family,
traced on the meta device (shapes only: no weights to build or copy)."""

from __future__ import annotations

import warnings

import pytest
import torch

pytestmark = pytest.mark.slow

# one per family; the input is 32x32 where the architecture takes it, else its smallest size
FAMILIES = {
    "alexnet": 63,
    "convnext_tiny": 32,
    "densenet121": 32,
    "efficientnet_b0": 32,
    "efficientnet_v2_s": 33,
    "googlenet": 32,
    "inception_v3": 75,
    "maxvit_t": 224,
    "mnasnet0_5": 32,
    "mobilenet_v2": 32,
    "mobilenet_v3_small": 32,
    "regnet_x_400mf": 32,
    "resnet18": 32,
    "resnext50_32x4d": 32,
    "shufflenet_v2_x0_5": 32,
    "squeezenet1_0": 32,
    "swin_t": 224,
    "swin_v2_t": 256,
    "vgg11_bn": 32,
    "vit_b_16": 224,
    "wide_resnet50_2": 32,
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_torchvision_architecture_exports(name):
    import torchvision

    from trainkit.builtin.zoo_common import adapt_channels
    from trainkit.tools.export import NormalizedInput

    own = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    device = "cpu" if name.startswith("regnet") else "meta"  # regnet computes its widths with tensors
    with torch.device(device), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torchvision.models.get_model(name, num_classes=10, **own)
    adapt_channels(name, model, 1)
    wrapped = NormalizedInput(model, (0.5,), (0.25,)).to(device).eval()
    size = FAMILIES[name]
    batch = {0: torch.export.Dim("batch", min=1, max=1 << 20)}
    program = torch.export.export(wrapped, (torch.empty(2, 1, size, size, device=device),), dynamic_shapes=(batch,))
    assert program.module() is not None
