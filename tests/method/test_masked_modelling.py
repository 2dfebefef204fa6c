"""Masked volume modelling (the pretext task of ``medcontext pretrain``): masks and the L1 loss."""

import pytest
import torch
from torch import nn

from medcontext.method.masked_modelling import MaskedVolumeModelling, cube_mask, masked_l1
from medcontext.models import create_model


def _identity_network() -> nn.Module:
    conv = nn.Conv3d(1, 1, kernel_size=1)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.zero_()
    return conv


def test_loss_equals_the_hand_computed_value_on_a_tiny_volume():
    # a 4x4x2 volume holding 0..31 (value = 8h + 2w + d), cells of 2x2x2 -> a 2x2x1 grid; the
    # network is the identity, so it returns the masked view: the mask token (set to 10) on the
    # masked cells, the image elsewhere (error 0 there, and not counted anyway).
    images = torch.arange(32, dtype=torch.float32).view(1, 1, 4, 4, 2)
    mvm = MaskedVolumeModelling(_identity_network(), in_channels=1, roi_size=(4, 4, 2), mask_ratio=0.5,
                                mask_cell=2)
    with torch.no_grad():
        mvm.masker.mask_token.fill_(10.0)
    mask = torch.tensor([[[[True], [False]], [[False], [True]]]])  # cells (0, 0) and (1, 1)
    # cell (0, 0): values 0 1 2 3 8 9 10 11 -> |10 - v| = 10 9 8 7 2 1 0 1 = 38
    # cell (1, 1): values 20 21 22 23 28 29 30 31 -> |10 - v| = 10 11 12 13 18 19 20 21 = 124
    # mean over the 16 masked voxels: (38 + 124) / 16 = 10.125
    out = mvm(images, mask)
    assert out.loss.item() == pytest.approx(10.125, abs=1e-6)
    assert int(out.voxel_mask.sum()) == 16 and out.reconstruction.shape == images.shape


def test_only_masked_voxels_count():
    target = torch.zeros(1, 1, 2, 2, 2)
    voxel_mask = torch.zeros(1, 1, 2, 2, 2, dtype=torch.bool)
    voxel_mask[0, 0, 0, 0, 0] = True
    reconstruction = torch.full((1, 1, 2, 2, 2), 5.0)
    reconstruction[0, 0, 0, 0, 0] = -2.0
    assert masked_l1(reconstruction, target, voxel_mask).item() == 2.0
    with pytest.raises(ValueError, match="no voxel is masked"):
        masked_l1(reconstruction, target, torch.zeros_like(voxel_mask))
    with pytest.raises(ValueError, match="output channels"):
        masked_l1(torch.zeros(1, 2, 2, 2, 2), target, voxel_mask)


def test_cube_masks_mask_exactly_the_ratio_in_3d():
    masks = cube_mask(64, (4, 4, 4), 0.6, generator=torch.Generator().manual_seed(0))
    assert masks.shape == (64, 4, 4, 4) and (masks.flatten(1).sum(1) == round(0.6 * 64)).all()
    assert not torch.equal(masks, masks[..., :1].expand_as(masks))  # not tubes: varies along depth
    assert torch.equal(masks, cube_mask(64, (4, 4, 4), 0.6, generator=torch.Generator().manual_seed(0)))


def test_tube_masks_are_constant_along_depth():
    torch.manual_seed(0)
    mvm = MaskedVolumeModelling(create_model("unet3d", 1, 1, 16, size="tiny"), in_channels=1, roi_size=16,
                                mask_shape="tube", mask_cell=4, seed=0)
    mask = mvm.draw_mask(3, (16, 16, 16))
    assert torch.equal(mask, mask[..., :1].expand_as(mask)) and (mask[..., 0].flatten(1).sum(1) == 10).all()


def test_token_space_for_a_vit_and_the_loss_trains_network_and_mask_token():
    torch.manual_seed(0)
    network = create_model("unetr", 1, 1, 32, size="tiny")
    mvm = MaskedVolumeModelling(network, in_channels=1, roi_size=32, seed=0)
    assert mvm.mask_space == "token" and mvm.masker.cell_size == (16, 16, 16)
    out = mvm(torch.randn(2, 1, 32, 32, 32))
    out.loss.backward()
    assert torch.isfinite(out.loss) and mvm.masker.mask_token.grad.abs().sum() > 0
    assert network.vit.patch_embedding.patch_embeddings.weight.grad.abs().sum() > 0


def test_settings_that_mask_nothing_or_everything_are_refused():
    network = create_model("unet3d", 1, 1, 16, size="tiny")
    with pytest.raises(ValueError, match="masks nothing"):
        MaskedVolumeModelling(network, in_channels=1, roi_size=16, mask_cell=16, mask_ratio=0.4)
    with pytest.raises(ValueError, match=r"mask_ratio must be in \(0, 1\)"):
        MaskedVolumeModelling(network, in_channels=1, roi_size=16, mask_ratio=1.0)
    with pytest.raises(ValueError, match="mask_shape"):
        MaskedVolumeModelling(network, in_channels=1, roi_size=16, mask_shape="ball")
