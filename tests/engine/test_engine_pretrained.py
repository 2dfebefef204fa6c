"""load_pretrained: accepted layouts, prefix maps, shape mismatches, reporting."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medcontext.models.pretrained import LoadReport, PretrainedLoadError, apply_prefix_map, load_pretrained


class Net(nn.Module):
    def __init__(self, out_channels=3):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv3d(1, 4, 3), nn.InstanceNorm3d(4, affine=True))
        self.head = nn.Conv3d(4, out_channels, 1)


def _filled(net: nn.Module, value: float) -> nn.Module:
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(value)
    return net


def test_plain_state_dict_loads_everything(tmp_path):
    torch.save(_filled(Net(), 0.5).state_dict(), tmp_path / "w.pt")
    net = Net()
    report = load_pretrained(net, tmp_path / "w.pt")
    assert isinstance(report, LoadReport)
    assert len(report.loaded) == len(net.state_dict()) and not report.missing and not report.unexpected
    assert all(torch.all(p == 0.5) for p in net.parameters())


def test_ddp_prefix_is_stripped_with_a_prefix_map(tmp_path):
    state = {"module." + k: v for k, v in _filled(Net(), 0.25).state_dict().items()}
    torch.save({"state_dict": state, "epoch": 7}, tmp_path / "ddp.pt")
    with pytest.raises(PretrainedLoadError, match="--init-prefix-map"):
        load_pretrained(Net(), tmp_path / "ddp.pt")  # nothing matches without the map
    net = Net()
    report = load_pretrained(net, tmp_path / "ddp.pt", prefix_map={"module.": ""})
    assert not report.missing and not report.unexpected
    assert torch.all(net.head.weight == 0.25)


def test_encoder_only_checkpoint_maps_onto_a_submodule_and_reports_missing(tmp_path):
    src = _filled(Net(), 0.75)
    state = {"backbone." + k[len("encoder."):]: v for k, v in src.state_dict().items() if k.startswith("encoder.")}
    state["projection.weight"] = torch.zeros(2, 2)  # an SSL head the network does not have
    torch.save({"model": state}, tmp_path / "ssl.pt")
    net = Net()
    head_before = net.head.weight.clone()
    report = load_pretrained(net, tmp_path / "ssl.pt", prefix_map={"backbone.": "encoder."})
    assert report.loaded == sorted(k for k in net.state_dict() if k.startswith("encoder."))
    assert report.missing == ["head.bias", "head.weight"] and report.unexpected == ["projection.weight"]
    assert torch.all(net.encoder[0].weight == 0.75) and torch.equal(net.head.weight, head_before)
    text = report.format()
    assert "missing 2" in text and "unexpected 1" in text and "projection.weight" in text


def test_shape_mismatch_is_an_error_unless_skipped(tmp_path):
    torch.save(_filled(Net(out_channels=5), 0.5).state_dict(), tmp_path / "w.pt")
    with pytest.raises(PretrainedLoadError) as err:
        load_pretrained(Net(out_channels=3), tmp_path / "w.pt")
    assert "head.weight" in str(err.value) and "(5, 4, 1, 1, 1)" in str(err.value) and "--init-skip-mismatch" in str(err.value)
    net = Net(out_channels=3)
    report = load_pretrained(net, tmp_path / "w.pt", skip_mismatch=True)
    assert {k for k, _, _ in report.mismatched} == {"head.weight", "head.bias"}
    assert torch.all(net.encoder[0].weight == 0.5) and not torch.all(net.head.weight == 0.5)


def test_medcontext_checkpoint_gives_the_student(tmp_path):
    student = _filled(Net(), 0.125).state_dict()
    model = {"network." + k: v for k, v in student.items()}
    model.update({"teacher." + k: torch.zeros_like(v) for k, v in student.items()})
    model["masker.mask_token"] = torch.zeros(1, 1, 2, 2, 2)
    torch.save({"format": "medcontext-checkpoint", "model": model, "step": 3}, tmp_path / "last.pt")
    net = Net()
    report = load_pretrained(net, tmp_path / "last.pt")
    assert not report.unexpected and not report.missing
    assert torch.all(net.head.weight == 0.125)


def test_prefix_map_prefers_the_longest_prefix_and_refuses_collisions():
    state = {"a.b.w": torch.zeros(1), "a.x": torch.ones(1)}
    assert set(apply_prefix_map(state, {"a.": "p.", "a.b.": "q."})) == {"q.w", "p.x"}
    with pytest.raises(PretrainedLoadError, match="two checkpoint keys"):
        apply_prefix_map({"a.w": torch.zeros(1), "b.w": torch.zeros(1)}, {"a.": "", "b.": ""})


def test_missing_or_unreadable_file_is_named(tmp_path):
    with pytest.raises(PretrainedLoadError, match="nope.pt"):
        load_pretrained(Net(), tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_text("junk")
    with pytest.raises(PretrainedLoadError, match="junk.pt"):
        load_pretrained(Net(), tmp_path / "junk.pt")
