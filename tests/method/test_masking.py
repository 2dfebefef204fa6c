import pytest
import torch

from medcontext.method import InputMasker, default_cell_size, tube_mask, upsample_mask


@pytest.mark.parametrize("depth_axis", [0, 1, 2, -1])
def test_exact_count_and_tubes_along_depth_axis(depth_axis):
    grid = (6, 5, 4)
    mask = tube_mask(8, grid, 0.4, depth_axis=depth_axis, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (8, *grid) and mask.dtype == torch.bool
    axis = depth_axis % 3 + 1
    # constant along the depth axis: every slice equals the first one
    first = mask.select(axis, 0).unsqueeze(axis)
    assert torch.equal(mask, first.expand_as(mask))
    plane = [g for i, g in enumerate(grid) if i != depth_axis % 3]
    n_plane = plane[0] * plane[1]
    per_sample = mask.select(axis, 0).flatten(1).sum(dim=1)
    assert per_sample.tolist() == [round(0.4 * n_plane)] * 8


def test_masks_differ_across_batch_and_are_reproducible():
    a = tube_mask(4, (8, 8, 3), 0.5, generator=torch.Generator().manual_seed(1))
    b = tube_mask(4, (8, 8, 3), 0.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert len({tuple(m.flatten().tolist()) for m in a}) == 4


def test_bernoulli_mean_ratio():
    mask = tube_mask(400, (10, 10, 2), 0.3, mode="bernoulli", generator=torch.Generator().manual_seed(0))
    ratio = mask[..., 0].float().mean().item()
    assert abs(ratio - 0.3) < 0.01
    # per-sample counts vary in bernoulli mode (they are fixed in exact mode)
    assert mask[..., 0].flatten(1).sum(1).unique().numel() > 3


def test_ratio_edges_and_errors():
    assert not tube_mask(2, (4, 4, 4), 0.0).any()
    assert tube_mask(2, (4, 4, 4), 1.0).all()
    with pytest.raises(ValueError, match="ratio"):
        tube_mask(2, (4, 4, 4), 1.5)
    with pytest.raises(ValueError, match="depth_axis"):
        tube_mask(2, (4, 4, 4), 0.5, depth_axis=3)
    with pytest.raises(ValueError, match="'exact' or 'bernoulli'"):
        tube_mask(2, (4, 4, 4), 0.5, mode="exactly")


def test_input_masker_replaces_exactly_the_masked_cubes():
    masker = InputMasker(in_channels=2, cell_size=(4, 4, 2))
    with torch.no_grad():
        masker.mask_token.copy_(torch.arange(2 * 4 * 4 * 2, dtype=torch.float32).view(2, 4, 4, 2) + 1000)
    images = torch.randn(3, 2, 10, 8, 6)  # 10 is not a multiple of 4: the last cell is partial
    grid = masker.grid(images.shape[2:])
    assert grid == (3, 2, 3)
    mask = tube_mask(3, grid, 0.5, generator=torch.Generator().manual_seed(0))
    out = masker(images, mask)
    voxel_mask = upsample_mask(mask, (4, 4, 2), (10, 8, 6))
    assert torch.equal(out[~voxel_mask.unsqueeze(1).expand_as(out)], images[~voxel_mask.unsqueeze(1).expand_as(out)])
    assert (out[voxel_mask.unsqueeze(1).expand_as(out)] >= 1000).all()
    # the token is tiled with its own offsets: voxel (1, 2, 1) of a masked cell holds token[:, 1, 2, 1]
    b, i, j, k = torch.nonzero(mask)[0].tolist()
    assert torch.equal(out[b, :, 4 * i + 1, 4 * j + 2, 2 * k + 1], masker.mask_token[:, 1, 2, 1].detach())


def test_input_masker_rejects_wrong_grid():
    masker = InputMasker(1, (4, 4, 4))
    with pytest.raises(ValueError, match="expected"):
        masker(torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 3, 3, 3, dtype=torch.bool))


def test_default_cell_size_shrinks_for_small_rois():
    assert default_cell_size((96, 96, 96)) == (16, 16, 16)
    assert default_cell_size((32, 48, 32)) == (8, 8, 8)
    assert default_cell_size(None) == (16, 16, 16)
