"""nnUNetTrainerMedContext's step on nnU-Net's target format, checked against ``medcontext.method``
computed by hand; teacher initialisation, checkpoints and resume. Skips without nnunetv2."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

nnunetv2 = pytest.importorskip("nnunetv2", reason='nnunetv2 is not installed (pip install "medcontext[nnunet]")')

from medcontext.integrations.nnunet import trainer as trainer_module  # noqa: E402
from medcontext.integrations.nnunet.settings import MedContextSettings  # noqa: E402
from medcontext.method import consistency_loss, momentum_at, tube_mask  # noqa: E402

CPU = torch.device("cpu")
IGNORE = 8  # the phantom's labels are 0..7; nnU-Net wants the ignore label above them


def _dataset_json(base: dict, kind: str) -> dict:
    dataset = copy.deepcopy(base)
    if kind == "regions":
        dataset["labels"] = {"background": 0, "organs": [1, 2, 3, 4, 5, 6, 7], "kidneys": [6, 7]}
        dataset["regions_class_order"] = [1, 6]
    elif kind == "ignore":
        dataset["labels"] = {**dataset["labels"], "ignore": IGNORE}
    return dataset


def _trainer(paths, name="nnUNetTrainerMedContext_2epochs_2iters_1valiters", kind="labels", fold=0):
    cls = trainer_module.named_trainer(name) if isinstance(name, str) else name
    plans = copy.deepcopy(paths["plans"])
    plans["continue_training"] = False
    trainer = cls(plans, "3d_fullres", fold, _dataset_json(paths["dataset_json"], kind), device=CPU)
    trainer.initialize()
    return trainer


def _batch(trainer, kind: str, seed: int = 0):
    """Images (2, 1, 32^3) and nnU-Net's target: a list over deep-supervision scales, full first."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 1, 32, 32, 32, generator=gen)
    labels = torch.randint(0, 8, (2, 1, 32, 32, 32), generator=gen)
    if kind == "ignore":
        labels[:, :, :8] = IGNORE
    if kind == "regions":
        labels = torch.cat([(labels >= 1), (labels >= 6)], dim=1)
    targets = []
    for scale in trainer._get_deep_supervision_scales():
        size = [round(32 * s) for s in scale]
        targets.append(F.interpolate(labels.float(), size=size, mode="nearest"))
    return images, targets


def _masked_by_hand(images, mask, token, cell):
    voxel = mask
    for axis, size in enumerate(cell, start=1):
        voxel = voxel.repeat_interleave(size, dim=axis)
    voxel = voxel[:, : images.shape[2], : images.shape[3], : images.shape[4]].unsqueeze(1)
    tiled = token.repeat(1, *(-(-s // c) for s, c in zip(images.shape[2:], cell)))[:, :32, :32, :32]
    return torch.where(voxel, tiled.unsqueeze(0), images)


@pytest.mark.parametrize("kind", ["labels", "regions", "ignore"])
def test_step_equals_medcontext_computed_by_hand(nnunet_paths, kind):
    trainer = _trainer(nnunet_paths, kind=kind)
    if kind == "regions":
        assert trainer.label_manager.has_regions
    if kind == "ignore":
        assert trainer.label_manager.ignore_label == IGNORE
    medcontext = trainer.medcontext
    images, targets = _batch(trainer, kind)
    torch.manual_seed(1)
    with torch.no_grad():
        medcontext.masker.mask_token.normal_()  # a non-zero token, so that masking shows
    student = copy.deepcopy(trainer.network)
    teacher_before = copy.deepcopy(medcontext.teacher)
    token = medcontext.masker.mask_token.detach().clone()
    cell = trainer.mask_cell
    medcontext.mask_generator = torch.Generator().manual_seed(5)
    grid = [32 // c for c in cell]
    mask = tube_mask(2, grid, 0.4, depth_axis=0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(mask, mask[:, :1].expand_as(mask))  # tubes along z, nnU-Net's first axis

    clean = student(images)
    masked = student(_masked_by_hand(images, mask, token, cell))
    with torch.no_grad():
        teacher_logits = teacher_before(images)
    assert isinstance(clean, list) and len(clean) == len(targets)  # deep supervision on
    with torch.no_grad():
        sup = trainer.loss(clean, targets)
        msl = trainer.loss(masked, targets)
        cl = consistency_loss(masked[0], teacher_logits)
    expected = sup + msl + 0.5 * cl

    out = trainer.train_step({"data": images, "target": targets})
    assert float(out["sup"]) == pytest.approx(float(sup), rel=1e-5)
    assert float(out["msl"]) == pytest.approx(float(msl), rel=1e-5)
    assert float(out["cl"]) == pytest.approx(float(cl), rel=1e-5) and float(cl) > 0
    assert float(out["loss"]) == pytest.approx(float(expected), rel=1e-5)

    # after the optimizer step: the mask token moved, and the teacher is the EMA at step 0
    assert not torch.equal(medcontext.masker.mask_token.detach(), token)
    m = momentum_at(0, trainer.num_epochs * trainer.num_iterations_per_epoch, 0.996)
    for (name, t_after), t_before, s_after in zip(medcontext.teacher.named_parameters(), teacher_before.parameters(),
                                                  trainer.network.parameters()):
        torch.testing.assert_close(t_after, m * t_before + (1 - m) * s_after.detach(), msg=name)
    assert trainer.medcontext_step == 1


def test_baseline_variant_is_nnunets_own_step(nnunet_paths):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    ours = _trainer(nnunet_paths, "nnUNetTrainerMedContext_baseline")
    plain = _trainer(nnunet_paths, nnUNetTrainer)
    plain.network.load_state_dict(ours.network.state_dict())
    assert ours.medcontext.teacher is None and ours.medcontext.masker is None
    assert len(ours.optimizer.param_groups) == 1
    images, targets = _batch(ours, "labels")
    loss_ours = ours.train_step({"data": images, "target": targets})["loss"]
    loss_plain = plain.train_step({"data": images, "target": [t.clone() for t in targets]})["loss"]
    assert float(loss_ours) == float(loss_plain)
    for a, b in zip(ours.network.state_dict().values(), plain.network.state_dict().values()):
        assert torch.equal(a, b)


def test_settings_reach_the_trainer_log_and_budget(nnunet_paths):
    trainer = _trainer(nnunet_paths, "nnUNetTrainerMedContext_noTeacher_ratio60_cell8x4x4_3epochs_4iters_2valiters")
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch) == (3, 4, 2)
    assert trainer.mask_cell == (8, 4, 4) and trainer.medcontext.masker.cell_size == (8, 4, 4)
    assert trainer.medcontext.variant == "no_teacher" and trainer.medcontext.mask_ratio == 0.6
    assert trainer.medcontext.teacher is None
    assert [len(g["params"]) for g in trainer.optimizer.param_groups][1] == 1  # the mask token's own group
    assert trainer.optimizer.param_groups[1]["weight_decay"] == 0.0
    log = open(trainer.log_file).read()
    assert "MedContext (nnUNetTrainerMedContext_noTeacher_ratio60_cell8x4x4_3epochs_4iters_2valiters)" in log
    assert "'mask_ratio': 0.6" in log


def test_named_classes_are_cached_and_resolved_like_nnunet_does(nnunet_paths):
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    from medcontext.integrations.nnunet import ext_trainer_folder

    name = "nnUNetTrainerMedContext_ratio60"
    cls = getattr(trainer_module, name)
    assert cls is trainer_module.named_trainer(name) and cls.__name__ == name
    assert cls.medcontext_settings == MedContextSettings(mask_ratio=0.6)
    folder = str(ext_trainer_folder())
    found = recursive_find_python_class(folder, name, None, base_folder=folder, cleanup_imports_from_base_folder=True)
    assert found is cls
    found_base = recursive_find_python_class(folder, "nnUNetTrainerMedContext", None, base_folder=folder,
                                             cleanup_imports_from_base_folder=True)
    assert found_base is trainer_module.nnUNetTrainerMedContext
    assert recursive_find_python_class(folder, "nnUNetTrainerOther", None, base_folder=folder) is None
    with pytest.raises(ValueError, match="unknown token"):
        recursive_find_python_class(folder, "nnUNetTrainerMedContext_rato60", None, base_folder=folder)


def test_2d_configuration_is_refused(nnunet_paths):
    plans = copy.deepcopy(nnunet_paths["plans"])
    plans["continue_training"] = False
    plans["configurations"]["2d_fake"] = {**plans["configurations"]["3d_fullres"], "patch_size": [32, 32]}
    with pytest.raises(ValueError, match="MedContext masks 3D patches"):
        trainer_module.nnUNetTrainerMedContext(plans, "2d_fake", 0, nnunet_paths["dataset_json"], device=CPU)


def test_teacher_starts_from_pretrained_weights_and_resume_restores_state(nnunet_paths, tmp_path):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    name = "nnUNetTrainerMedContext_2epochs_2iters_1valiters"
    source = _trainer(nnunet_paths, name, fold=1)
    with torch.no_grad():
        for p in source.network.parameters():
            p.add_(0.5)
    pretrained = tmp_path / "pretrained.pth"
    torch.save({"network_weights": source.network.state_dict()}, pretrained)

    trainer = _trainer(nnunet_paths, name)
    random_init = copy.deepcopy(trainer.medcontext.teacher.state_dict())
    load_pretrained_weights(trainer.network, str(pretrained))  # what -pretrained_weights does after initialize()
    trainer.on_train_start()
    loaded = trainer.network.state_dict()
    teacher = trainer.medcontext.teacher.state_dict()
    seg = [k for k in teacher if ".seg_layers." in k]  # nnU-Net does not transfer the output layers
    for key, value in teacher.items():
        assert torch.equal(value, loaded[key]), key
        if key not in seg and value.is_floating_point():
            assert not torch.equal(value, random_init[key]), key

    # one epoch, a checkpoint, and a fresh trainer that resumes from it
    trainer.on_epoch_start()
    trainer.on_train_epoch_start()
    outputs = [trainer.train_step(next(trainer.dataloader_train)) for _ in range(trainer.num_iterations_per_epoch)]
    trainer.on_train_epoch_end(outputs)
    assert "MedContext terms: sup" in open(trainer.log_file).read()
    checkpoint_file = tmp_path / "checkpoint_latest.pth"
    trainer.save_checkpoint(str(checkpoint_file))
    assert not list(tmp_path.glob(".*.tmp*"))  # no temporary file of the atomic write left
    saved = torch.load(checkpoint_file, weights_only=False)
    assert saved["trainer_name"] == name and saved["medcontext"]["settings"]["num_epochs"] == 2
    assert saved["medcontext"]["depth_axis"] == 0

    resumed = _trainer(nnunet_paths, name)
    resumed.load_checkpoint(str(checkpoint_file))
    resumed.on_train_start()  # must keep the restored teacher, not copy the student
    for a, b in zip(resumed.medcontext.teacher.state_dict().values(), trainer.medcontext.teacher.state_dict().values()):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(resumed.medcontext.teacher.state_dict().values(),
                                                     resumed.network.state_dict().values()))
    assert torch.equal(resumed.medcontext.masker.mask_token, trainer.medcontext.masker.mask_token)
    assert resumed.current_epoch == 1  # nnU-Net stores the next epoch
    resumed.on_train_epoch_start()
    assert resumed.medcontext_step == 1 * resumed.num_iterations_per_epoch

    other = _trainer(nnunet_paths, "nnUNetTrainerMedContext_ratio60_2epochs_2iters_1valiters")
    with pytest.raises(ValueError, match="written with MedContext settings"):
        other.load_checkpoint(str(checkpoint_file))
