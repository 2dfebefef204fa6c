"""Registry-wide: every model's default mask cell, mask space and tube axis are those of docs/method.md."""

import pytest
import torch

from medcontext import MedContext
from medcontext.method import find_token_adapter
from medcontext.method.masking import default_cell_size
from medcontext.models import create_model, get_model_spec, list_models

# SPEC 2: 16^3 for UNETR (its token patch) and SwinUNETR (8^3 blocks of its 2^3 tokens), the
# embedding patch for nnFormer, 16^3 (smaller when the ROI is small) for input-space masking.
SPEC_DEFAULTS = {
    "unetr": ("token", lambda net, roi: (16, 16, 16)),
    "swin_unetr": ("token", lambda net, roi: (16, 16, 16)),
    "nnformer": ("token", lambda net, roi: tuple(net.patch_size)),
    "unet3d": ("input", lambda net, roi: default_cell_size(roi)),
    "pcrlv2": ("input", lambda net, roi: default_cell_size(roi)),
}


@pytest.mark.parametrize("name", list_models())
def test_default_mask_cell_and_tube_axis_follow_spec(name):
    assert name in SPEC_DEFAULTS, f"model {name!r} has no default mask cell in this table: add one (and to docs/method.md)"
    spec = get_model_spec(name)
    torch.manual_seed(0)
    network = create_model(name, 1, 2, spec.test_roi, **spec.test_options)
    mc = MedContext(network, total_steps=2, roi_size=spec.test_roi)
    space, expected = SPEC_DEFAULTS[name]
    assert mc.mask_space == space
    assert tuple(mc.masker.cell_size) == tuple(expected(network, spec.test_roi))
    assert mc.depth_axis == -1  # tubes along the last spatial axis (axial slices in RAS)
    mask = mc.draw_mask(2, spec.test_roi)
    assert torch.equal(mask, mask[..., :1].expand_as(mask))  # constant along the depth axis


@pytest.mark.parametrize("preset, patch", [("synapse", (4, 4, 2)), ("acdc", (4, 4, 1)), ("tumor", (4, 4, 4))])
def test_nnformer_paper_presets_mask_one_embedding_patch_per_cell(preset, patch):
    from medcontext.models.nnformer import PRESET_ROI

    with torch.device("meta"):
        network = create_model("nnformer", 1, 4, PRESET_ROI[preset], preset=preset)
        mc = MedContext(network, total_steps=2, roi_size=PRESET_ROI[preset])
    assert find_token_adapter(network) is not None and mc.mask_space == "token"
    assert tuple(mc.masker.cell_size) == patch
