"""PCRLv2's network: parameter count and shapes against the published definition.

The registry's contract tests (tests/models/test_model_contract.py) cover the rest.
"""

import pytest
import torch

from medcontext.models import create_model
from medcontext.models.pcrlv2 import PCRLv2


def _conv(c_in, c_out, kernel):
    return c_in * c_out * kernel**3 + c_out  # weights + bias


def _conv_norm(c_in, c_out):
    return _conv(c_in, c_out, 3) + 2 * c_out  # LUConv: 3^3 conv + affine norm (2 per channel)


# Derived by hand from the published definition (RL4M/PCRLv2, models/pcrlv2_model_3d.py,
# SegmentationModel(in_channels=1, n_class=1)): _make_nConv(in, depth) is LUConv(in, 32*2^depth)
# then LUConv(32*2^depth, 64*2^depth); UpTransition(in, out, depth) is ConvTranspose3d(in, out, 2)
# then _make_nConv(out, depth, double_chnnel=True) = LUConv(out, 64*2^depth) twice; OutputTransition
# is a 1x1x1 conv 64 -> n_class. The pretext-task heads of each UpTransition (BatchNorm1d,
# predictor MLP, one-channel LUConv: 360,201 parameters in all) are not part of its segmentation
# forward and not counted.
ENCODER = (
    _conv_norm(1, 32) + _conv_norm(32, 64)  # down_tr64
    + _conv_norm(64, 64) + _conv_norm(64, 128)  # down_tr128
    + _conv_norm(128, 128) + _conv_norm(128, 256)  # down_tr256
    + _conv_norm(256, 256) + _conv_norm(256, 512)  # down_tr512
)
DECODER = (
    _conv(512, 512, 2) + _conv_norm(512, 256) + _conv_norm(256, 256)  # up_tr256
    + _conv(256, 256, 2) + _conv_norm(256, 128) + _conv_norm(128, 128)  # up_tr128
    + _conv(128, 128, 2) + _conv_norm(128, 64) + _conv_norm(64, 64)  # up_tr64
)
PUBLISHED_PARAMETERS = ENCODER + DECODER + _conv(64, 1, 1)  # + out_tr


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_hand_count_is_the_issues_16_8_million():
    assert (ENCODER, DECODER, PUBLISHED_PARAMETERS) == (7_027_776, 9_723_392, 16_751_233)


@pytest.mark.parametrize("norm", ["group", "batch", "instance"])
def test_paper_size_has_the_published_parameter_count(norm):
    with torch.device("meta"):
        network = create_model("pcrlv2", 1, 1, (64, 64, 32), norm=norm)
        encoder = [network.down_tr64, network.down_tr128, network.down_tr256, network.down_tr512]
        assert sum(_count(stage) for stage in encoder) == ENCODER
        assert _count(network) == PUBLISHED_PARAMETERS
        # every extra input channel and class adds one 3^3 filter per first-layer channel / one 1x1 filter
        assert _count(create_model("pcrlv2", 4, 3, 64, norm=norm)) == PUBLISHED_PARAMETERS + 3 * 32 * 27 + 2 * 65


def test_published_state_dict_keys():
    """Module names follow the published keys, so released weights load without a prefix map."""
    with torch.device("meta"):
        keys = set(create_model("pcrlv2", 1, 1, 32, norm="batch").state_dict())
    for key in ("down_tr64.ops.0.conv1.weight", "down_tr64.ops.0.bn1.running_mean", "down_tr512.ops.1.bn1.bias",
                "up_tr256.up_conv.weight", "up_tr64.ops.1.conv1.bias", "out_tr.final_conv.weight"):
        assert key in keys


def test_stage_shapes_and_no_skip_connection():
    torch.manual_seed(0)
    network = create_model("pcrlv2", 1, 2, (32, 32, 16), size="tiny").eval()
    names = ("down_tr64", "down_tr128", "down_tr256", "down_tr512", "up_tr256", "up_tr128", "up_tr64", "out_tr")
    inputs, outputs = {}, {}

    def record(name):
        def hook(_module, args, out):
            inputs[name], outputs[name] = args[0], out
        return hook

    hooks = [getattr(network, name).register_forward_hook(record(name)) for name in names]
    with torch.no_grad():
        out = network(torch.randn(1, 1, 32, 32, 16))
    for hook in hooks:
        hook.remove()
    assert out.shape == (1, 2, 32, 32, 16)
    assert {name: tuple(outputs[name].shape) for name in names[:-1]} == {
        "down_tr64": (1, 8, 32, 32, 16), "down_tr128": (1, 16, 16, 16, 8), "down_tr256": (1, 32, 8, 8, 4),
        "down_tr512": (1, 64, 4, 4, 2), "up_tr256": (1, 32, 8, 8, 4), "up_tr128": (1, 16, 16, 16, 8),
        "up_tr64": (1, 8, 32, 32, 16),
    }
    # each decoder stage reads exactly the stage below it: no encoder features are concatenated
    for below, stage in zip(names[3:], names[4:]):
        assert torch.equal(inputs[stage], outputs[below]), stage


def test_bad_roi_and_options_are_refused():
    with pytest.raises(ValueError, match="multiple of"):
        create_model("pcrlv2", 1, 2, (36, 32, 32), size="tiny")
    with pytest.raises(ValueError, match="at least 16"):
        create_model("pcrlv2", 1, 2, (8, 32, 32), size="tiny")
    with pytest.raises(ValueError, match="unknown norm 'layer'"):
        PCRLv2(1, 2, norm="layer")
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        create_model("pcrlv2", 1, 2, 32, size="huge")


@pytest.mark.parametrize("size, base, parameters", [("medium", 16, 4_190_116), ("small", 8, 1_048_660)])
def test_the_cpu_sizes_are_the_published_layout_at_a_narrower_base_width(size, base, parameters):
    # 1 channel in, 4 classes out (ACDC); the count scales as the published layout at base width `base`
    network = create_model("pcrlv2", 1, 4, (32, 32, 16), size=size)
    assert _count(network) == _count(PCRLv2(1, 4, base_channels=base)) == parameters
    assert network.down_tr512.ops[1].conv1.out_channels == 16 * base
