"""The teacher after loading weights: sync_teacher() and the out-of-sync warning."""

import warnings

import pytest
import torch

from medcontext import MedContext
from medcontext.method import TeacherOutOfSyncWarning


def _pretrained_state(net):
    return {k: v + 0.5 if v.is_floating_point() else v for k, v in net.state_dict().items()}


def test_weights_loaded_after_wrapping_are_detected_at_the_first_step(tiny_net, batch):
    mc = MedContext(tiny_net, total_steps=10, mask_cell=4, seed=0)
    tiny_net.load_state_dict(_pretrained_state(tiny_net))  # the common mistake: load after wrapping
    with pytest.warns(TeacherOutOfSyncWarning, match=r"mc.sync_teacher\(\)"):
        mc.losses(*batch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mc.losses(*batch)  # said once


def test_sync_teacher_copies_the_student_exactly_and_silences_the_check(tiny_net, batch):
    mc = MedContext(tiny_net, total_steps=10, mask_cell=4, seed=0)
    tiny_net.load_state_dict(_pretrained_state(tiny_net))
    mc.sync_teacher()
    for (name, s), t in zip(mc.network.state_dict().items(), mc.teacher.state_dict().values()):
        assert torch.equal(s, t), name
    assert all(not p.requires_grad for p in mc.teacher.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mc.losses(*batch)


def test_no_warning_when_in_sync_after_an_update_or_for_a_loaded_checkpoint(tiny_net, make_net, batch):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MedContext(tiny_net, total_steps=10, mask_cell=4, seed=0).losses(*batch)  # fresh: in sync
        trained = MedContext(tiny_net, total_steps=10, mask_cell=4, seed=0)
        trained.update_teacher(0)
        with torch.no_grad():
            for p in trained.network.parameters():
                p.add_(1.0)
        trained.losses(*batch)  # after an EMA update the teacher may differ
        state = trained.state_dict()
        other = MedContext(make_net(), total_steps=10, mask_cell=4, seed=0)
        other.load_state_dict(state)  # a checkpoint brings its own teacher
        other.losses(*batch)
        MedContext(make_net(), variant="baseline").losses(*batch)  # no teacher
