"""Tests for the nnFormer network, its presets and its token adapter."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from medcontext.method.adapters import find_token_adapter
from medcontext.models.nnformer import (
    PRESET_ROI,
    PRESETS,
    NnFormer,
    VolumeAttentionBlock,
    build_nnformer,
    count_parameters,
)
from medcontext.models.registry import create_model, get_model_spec, list_models

TINY = dict(embed_dim=8, num_heads=(1, 1, 2, 2))
# (preset, in_channels, out_channels, a small ROI that keeps the preset's patch and strides)
PRESET_CASES = [
    ("small", 1, 3, (32, 32, 32)),
    ("synapse", 1, 14, (32, 32, 16)),
    ("acdc", 1, 4, (32, 32, 14)),  # depth tokens 14 -> 14 -> 7 -> 3, as the authors' ACDC model
    ("tumor", 4, 3, (32, 32, 32)),
]


def _tiny(preset: str = "small", roi=(32, 32, 32), in_channels: int = 1, out_channels: int = 3, **options) -> NnFormer:
    torch.manual_seed(0)
    return build_nnformer(in_channels, out_channels, roi, preset=preset, **{**TINY, **options})


# ----------------------------------------------------------------------------- registry, shapes


def test_registered_with_working_test_options():
    assert "nnformer" in list_models()
    spec = get_model_spec("nnformer")
    torch.manual_seed(0)
    net = create_model("nnformer", 1, 2, spec.test_roi, **spec.test_options)
    x = torch.randn(1, 1, *spec.test_roi)
    out = net(x)
    assert [o.shape for o in out] == [(1, 2, 32, 32, 32), (1, 2, 16, 16, 16), (1, 2, 8, 8, 8)]
    sum(o.mean() for o in out).backward()
    assert sum(p.numel() for p in net.parameters()) < 500_000  # tiny: ~0.27M


@pytest.mark.parametrize("preset, cin, cout, roi", PRESET_CASES)
def test_preset_output_shape(preset, cin, cout, roi):
    net = _tiny(preset, roi, cin, cout).eval()
    with torch.no_grad():
        y = net(torch.randn(2, cin, *roi))
    assert y.shape == (2, cout, *roi)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("preset, cin, cout", [("synapse", 1, 14), ("acdc", 1, 4), ("tumor", 4, 4)])
def test_full_size_presets_on_meta_device(preset, cin, cout):
    """The real presets at their real crops, shapes only (meta tensors allocate nothing)."""
    roi = PRESET_ROI[preset]
    with torch.device("meta"):
        net = build_nnformer(cin, cout, roi, preset=preset).eval()
        y = net(torch.empty(1, cin, *roi))
    assert y.shape == (1, cout, *roi)


def test_acdc_grids_follow_the_authors_anisotropic_plan():
    with torch.device("meta"):
        net = build_nnformer(1, 4, PRESET_ROI["acdc"], preset="acdc").eval()
        grids = []
        hooks = [s.register_forward_hook(lambda m, i, o: grids.append(tuple(o[0].shape[1:4]))) for s in net.encoder]
        net(torch.empty(1, 1, *PRESET_ROI["acdc"]))
    for h in hooks:
        h.remove()
    assert grids == [(40, 40, 14), (20, 20, 14), (10, 10, 7), (5, 5, 3)]
    # the two deepest stages attend over the whole grid (GV-MSA), the first two in windows
    assert net.encoder[2].blocks[1].window == (10, 10, 7) and net.encoder[2].blocks[1].shift == (0, 0, 0)
    assert net.encoder[0].blocks[1].window == (5, 5, 3) and net.encoder[0].blocks[1].shift == (2, 2, 1)


def test_synapse_windows_local_then_global():
    with torch.device("meta"):
        net = build_nnformer(1, 14, PRESET_ROI["synapse"], preset="synapse")
    enc = net.encoder
    assert [enc[i].blocks[0].window for i in range(4)] == [(4, 4, 4), (4, 4, 4), (8, 8, 8), (4, 4, 4)]
    assert [enc[i].blocks[1].shift for i in range(4)] == [(2, 2, 2), (2, 2, 2), (0, 0, 0), (0, 0, 0)]
    assert all(b.shift == (0, 0, 0) for st in enc for b in st.blocks[::2])  # alternate blocks shift
    assert [d.blocks[0].skip_attention for d in net.decoder] == [True] * 3


def test_deep_supervision_list_in_training_and_tensor_in_eval():
    net = _tiny(roi=(32, 32, 16)).train()
    x = torch.randn(2, 1, 32, 32, 16)
    out = net(x)
    assert isinstance(out, list)
    assert [tuple(o.shape) for o in out] == [(2, 3, 32, 32, 16), (2, 3, 16, 16, 8), (2, 3, 8, 8, 4)]
    net.eval()
    y = net(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 3, 32, 32, 16)
    torch.testing.assert_close(y, out[0])  # no dropout here: the list's head is the eval output


def test_no_deep_supervision_returns_tensor_in_training():
    net = _tiny(deep_supervision=False).train()
    y = net(torch.randn(1, 1, 32, 32, 32))
    assert isinstance(y, torch.Tensor) and y.shape == (1, 3, 32, 32, 32)
    assert len(net.heads) == 1


def test_other_input_sizes_than_the_roi():
    net = _tiny().eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 48, 32, 20)).shape == (1, 3, 48, 32, 20)


def test_backward_reaches_every_parameter():
    net = _tiny().train()
    out = net(torch.randn(2, 1, 32, 32, 32))
    sum((o**2).mean() for o in out).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or p.grad.abs().sum() == 0]
    assert missing == []


# ----------------------------------------------------------------------------- validation


def test_roi_not_multiple_of_patch_names_the_fix():
    expected = r"multiple of the patch size \(4, 4, 2\).*roi_size=\(130, 128, 63\); choose e.g. \(128, 128, 62\)"
    with pytest.raises(ValueError, match=expected):
        build_nnformer(1, 14, (130, 128, 63), preset="synapse")


def test_roi_too_small_for_the_down_sampling():
    with pytest.raises(ValueError, match=r"at least \(16, 16, 16\) voxels"):
        build_nnformer(1, 2, (16, 16, 8), preset="small")


def test_bad_preset_and_option_names_suggest_the_closest():
    with pytest.raises(ValueError, match="Did you mean 'synapse'"):
        build_nnformer(1, 2, 64, preset="synaps")
    with pytest.raises(ValueError, match="Did you mean 'window_size'"):
        build_nnformer(1, 2, 64, window_sizes=4)


def test_heads_must_divide_widths():
    with pytest.raises(ValueError, match="num_heads must divide"):
        build_nnformer(1, 2, 32, embed_dim=10, num_heads=(3, 3, 3, 3))


def test_forward_rejects_wrong_input():
    net = _tiny()
    with pytest.raises(ValueError, match=r"multiple of the patch size \(2, 2, 2\).*input size=\(32, 32, 31\)"):
        net(torch.randn(1, 1, 32, 32, 31))
    with pytest.raises(ValueError, match=r"input size=\(32, 32, 8\) is too small"):
        net(torch.randn(1, 1, 32, 32, 8))
    with pytest.raises(ValueError, match=r"expects \(B, 1, H, W, D\)"):
        net(torch.randn(1, 2, 32, 32, 32))


def test_options_override_preset():
    net = _tiny("synapse", (32, 32, 16), patch_size=(2, 2, 2), window_size=2, deep_supervision=False)
    assert net.patch_size == (2, 2, 2) and net.embed_dim == 8 and len(net.heads) == 1
    assert net.encoder[0].blocks[0].window == (2, 2, 2)


# ----------------------------------------------------------------------------- attention reference


def _brute_force_block(block: VolumeAttentionBlock, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
    """The block computed token by token from the definition of (shifted) window attention."""
    attn, (w, s) = block.attn, (block.window, block.shift)
    grid = x.shape[1:4]
    padded = [g + (-g) % wi for g, wi in zip(grid, w)]
    heads, c = attn.num_heads, x.shape[-1]
    d = c // heads
    if skip is None:
        q, k, v = attn.qkv(block.norm1(x))[0].chunk(3, dim=-1)
        shortcut = x
    else:
        q = block.norm1(x)[0]
        k, v = attn.kv(block.norm_skip(skip))[0].chunk(2, dim=-1)
        shortcut = x + skip

    def place(p):  # window id, offset inside the window, region id (after the cyclic shift)
        r = [(pa - sa) % P for pa, sa, P in zip(p, s, padded)]
        region = tuple(0 if sa == 0 else (0 if ra < P - wa else 1 if ra < P - sa else 2)
                       for ra, sa, wa, P in zip(r, s, w, padded))
        return tuple(ra // wa for ra, wa in zip(r, w)), tuple(ra % wa for ra, wa in zip(r, w)), region

    positions = list(itertools.product(*(range(g) for g in grid)))
    out = torch.zeros_like(q)
    for p in positions:
        win, off, reg = place(p)
        keys = [k_ for k_ in positions if place(k_)[0] == win and place(k_)[2] == reg]
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            logits = []
            for kp in keys:
                ko = place(kp)[1]
                rel = [a - b + wa - 1 for a, b, wa in zip(off, ko, w)]
                idx = (rel[0] * (2 * w[1] - 1) + rel[1]) * (2 * w[2] - 1) + rel[2]
                logits.append(q[p][sl] @ k[kp][sl] / math.sqrt(d) + attn.relative_position_bias[idx, h])
            a = torch.softmax(torch.stack(logits), 0)
            out[p][sl] = sum(ai * v[kp][sl] for ai, kp in zip(a, keys))
    y = shortcut[0] + attn.proj(out)
    return (y + block.mlp(block.norm2(y)))[None]


@pytest.mark.parametrize(
    "grid, window, shift, skip_attention",
    [
        ((6, 5, 3), (4, 4, 2), (2, 2, 1), False),  # shifted windows and padding on every axis
        ((6, 5, 3), (4, 4, 2), (0, 0, 0), False),  # regular windows, padding masked
        ((4, 4, 3), (4, 4, 3), (0, 0, 0), False),  # one window over the whole grid: GV-MSA
        ((5, 4, 3), (4, 4, 2), (0, 0, 0), True),   # skip attention with padding
    ],
)
def test_window_attention_matches_token_by_token_reference(grid, window, shift, skip_attention):
    torch.manual_seed(0)
    block = VolumeAttentionBlock(8, 2, window, shift, skip_attention=skip_attention).eval()
    with torch.no_grad():
        block.attn.relative_position_bias.normal_()
        x = torch.randn(1, *grid, 8)
        skip = torch.randn(1, *grid, 8) if skip_attention else None
        torch.testing.assert_close(block(x, skip), _brute_force_block(block, x, skip), atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- token adapter, leaks


def _cell_masks(net: NnFormer, shape, ratio: float = 0.5, seed: int = 0):
    """Tube mask over the in-plane token grid: token mask (B, gx, gy, gz), voxel mask (B, 1, H, W, D)."""
    b, _, *size = shape
    grid = [s // p for s, p in zip(size, net.patch_size)]
    g = torch.Generator().manual_seed(seed)
    plane = torch.rand(b, grid[0], grid[1], generator=g) < ratio
    tokens = plane[..., None].expand(b, *grid).clone()
    voxels = tokens
    for axis, p in enumerate(net.patch_size):
        voxels = voxels.repeat_interleave(p, dim=axis + 1)
    return tokens, voxels[:, None]


def _token_hook(tokens_mask: torch.Tensor, vector: torch.Tensor):
    def hook(module, inputs, output):  # output (B, E, gx, gy, gz)
        return torch.where(tokens_mask[:, None], vector[None, :, None, None, None], output)

    return hook


def test_token_adapter_points_at_the_conv_embedding():
    net = _tiny(roi=(32, 32, 16))
    adapter = find_token_adapter(net)
    assert adapter is not None and adapter.layout == "channels_first"
    module = adapter.embedding_module(net)
    assert module is net.patch_embed
    assert adapter.token_patch(net) == (2, 2, 2) and adapter.embed_dim(net) == 8 and adapter.in_channels(net) == 1
    assert module(torch.randn(2, 1, 32, 32, 16)).shape == (2, 8, 16, 16, 8)


def test_no_leak_with_input_masking_and_token_hook():
    """Masked pass = input-space masked volume + token replacement: masked voxels cannot matter."""
    net = _tiny(roi=(32, 32, 16)).eval()
    x1 = torch.randn(2, 1, 32, 32, 16)
    tokens, voxels = _cell_masks(net, x1.shape)
    assert tokens.any() and (~tokens).any()
    x2 = torch.where(voxels, torch.randn_like(x1) * 5, x1)  # differ only inside masked cells
    assert not torch.equal(x1, x2)
    handle = net.patch_embed.register_forward_hook(_token_hook(tokens, torch.randn(8)))
    with torch.no_grad():
        y1 = net(torch.where(voxels, torch.zeros_like(x1), x1))
        y2 = net(torch.where(voxels, torch.zeros_like(x2), x2))
    handle.remove()
    assert torch.equal(y1, y2)


def test_token_hook_alone_sees_masked_voxels_at_cell_borders():
    """Why the masked pass must also get the input-space masked volume: the 3x3x3 embedding
    convs let tokens next to a masked cell read voxels inside it."""
    net = _tiny(roi=(32, 32, 16)).eval()
    x1 = torch.randn(1, 1, 32, 32, 16)
    tokens, voxels = _cell_masks(net, x1.shape)
    x2 = torch.where(voxels, torch.randn_like(x1) * 5, x1)
    handle = net.patch_embed.register_forward_hook(_token_hook(tokens, torch.randn(8)))
    with torch.no_grad():
        assert not torch.allclose(net(x1), net(x2))
    handle.remove()


def test_embedding_is_the_only_path_from_the_input():
    """Replacing every token makes the output independent of the input: no side path reads x."""
    net = _tiny(roi=(32, 32, 16)).eval()
    x1, x2 = torch.randn(1, 1, 32, 32, 16), torch.randn(1, 1, 32, 32, 16)
    everything = torch.ones(1, 16, 16, 8, dtype=torch.bool)
    handle = net.patch_embed.register_forward_hook(_token_hook(everything, torch.randn(8)))
    with torch.no_grad():
        assert torch.equal(net(x1), net(x2))
    handle.remove()


def test_hook_changes_the_output_and_removing_it_restores_it():
    net = _tiny(roi=(32, 32, 16)).eval()
    x = torch.randn(1, 1, 32, 32, 16)
    tokens, voxels = _cell_masks(net, x.shape)
    xm = torch.where(voxels, torch.zeros_like(x), x)
    with torch.no_grad():
        plain = net(xm)
        handle = net.patch_embed.register_forward_hook(_token_hook(tokens, torch.randn(8)))
        hooked = net(xm)
        handle.remove()
        again = net(xm)
    assert not torch.allclose(plain, hooked)
    assert torch.equal(plain, again)


# ----------------------------------------------------------------------------- parameter counts


def test_synapse_parameter_count_matches_the_paper():
    n = count_parameters("synapse", in_channels=1, out_channels=14)
    assert abs(n - 150.5e6) / 150.5e6 < 0.02, n


def test_parameter_count_equals_a_real_build():
    net = build_nnformer(1, 3, (32, 32, 32), preset="small")
    assert count_parameters("small", 1, 3, roi_size=(32, 32, 32)) == sum(p.numel() for p in net.parameters())
    assert set(PRESETS) == set(PRESET_ROI)


def test_with_the_method_core_token_masker():
    """The adapter works with MedContext's TokenMasker: masked voxels do not reach the output,
    and the masked pass differs from the clean one."""
    from medcontext.method.masking import tube_mask
    from medcontext.method.token_masking import TokenMasker

    net = _tiny(roi=(32, 32, 16)).eval()
    masker = TokenMasker(net, find_token_adapter(net), cell_size=net.patch_size)
    x1 = torch.randn(2, 1, 32, 32, 16)
    mask = tube_mask(2, masker.grid(x1.shape[2:]), 0.4, generator=torch.Generator().manual_seed(0))
    voxels = mask.repeat_interleave(2, 1).repeat_interleave(2, 2).repeat_interleave(2, 3)[:, None]
    x2 = torch.where(voxels, torch.randn_like(x1) * 5, x1)
    with torch.no_grad():
        y1, y2, clean = masker(net, x1, mask), masker(net, x2, mask), net(x1)
    assert torch.equal(y1, y2)
    assert not torch.allclose(y1, clean)
