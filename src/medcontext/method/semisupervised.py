"""The semi-supervised steps: MedContext, Mean Teacher and BCP on labelled + unlabelled crops.

:meth:`MedContext.losses(images, labels, unlabeled=U, step=k) <medcontext.method.MedContext.losses>`
calls :func:`semi_supervised_losses` for the variants of
:data:`~medcontext.method.settings.VARIANTS` that carry an ``unlabeled`` step. Every teacher
pass runs first, under ``torch.no_grad()`` and in eval mode; the student passes and the teacher
passes each run as separate forwards or as one concatenated forward, as
``MedContext(student_passes=...)`` decides for the labelled step (the teacher's eval-mode layers
never couple the crops of a batch, so its passes join whenever the student's do).
No label of an unlabelled crop exists anywhere in these functions: the unlabelled batch is
images only.

Terms (``LossBreakdown``), with ``r`` the ramp-up weight at the step:

* MedContext (``medcontext_semi``, ``medcontext_semi_cl``):
  ``total = sup + msl + beta * cl + r * (consistency_weight * cl_unlabeled + pseudo_weight * pseudo)``,
  ``cl_unlabeled = L_c(F_s(U_M), F_t(U))`` (the method's relative squared error of the logits: the
  same consistency the labelled crops get, so both parts of the batch pull the masked student
  toward the teacher alike), ``pseudo = mean_b q_b CE(F_s(U_M), argmax F_t(U))``.
* Mean Teacher: ``total = sup + r * consistency_weight * cl_unlabeled`` with
  ``cl_unlabeled = mean((softmax F_s(U) - softmax F_t(U + noise))^2)``.
* BCP: ``total = sup + pseudo_weight * pseudo``; ``sup`` is the Dice + CE of both mixes over the
  voxels that come from the labelled crop, ``pseudo`` the same over the pasted unlabelled voxels
  against the teacher's pseudo-labels; ``medcontext_bcp`` adds ``msl``, the same two terms of the
  masked views of the mixes.

Region tasks (``output_mode="sigmoid"``: one sigmoid per region channel, labels (B, R, H, W, D)
binary, e.g. BraTS WT/TC/ET) run the same steps with the sigmoid form of every term
(:func:`~medcontext.method.semisupervised_losses.unlabeled_losses`), as each method would for
independent binary regions:

* MedContext: ``cl_unlabeled`` is unchanged (it compares logits, whatever they stand for);
  ``pseudo = mean_b q_b BCE(F_s(U_M), sigmoid F_t(U) > 0.5)`` per region channel, with ``q_b`` the
  share of (voxel, region) pairs where ``max(p, 1 - p)`` exceeds ``confidence``.
* Mean Teacher: ``cl_unlabeled = mean((sigmoid F_s(U) - sigmoid F_t(U + noise))^2)``.
* BCP: sigmoid Dice + BCE over the same voxels, the teacher's regions (probability > 0.5 per
  channel) as pseudo-labels, their largest connected component kept per channel; the mixes
  paste all R target channels of a voxel together.

Where this differs from the published code, on purpose:

* The supervised loss of every variant is the project's Dice + CE (SSL4MIS and BCP halve
  theirs, ``(Dice + CE) / 2``); the weights keep the published ratios (Mean Teacher's 0.1 on the
  half-scale loss is 0.2 here; BCP's 0.5 for pseudo-labelled voxels is a ratio already).
* BCP splits a batch into halves (``X_a|U_a`` and ``U_b|X_b``); here each labelled crop is
  mixed with its unlabelled partner both ways, which also works for a batch of one (the study's
  batch size), at two student crops per labelled crop instead of one.
* BCP pre-trains on labelled copy-paste for a separate run and restarts from the best
  validation checkpoint; here the first ``pretrain`` of the run is that phase (labelled crops
  copy-pasted into each other when the batch holds two or more, plain supervision for one) and
  the teacher copies the student until it ends, so self-training starts from the last step.
* Mean Teacher's ramp is continuous in the step (SSL4MIS counts it in blocks of 150 iterations).
* Pseudo-labels, masks and the noise use the full-resolution head of deep-supervision networks;
  the other heads stay in the graph with a zero gradient.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from .copy_paste import copy_paste, box_mask
from .losses import consistency_loss, first_head
from .schedules import check_step, pretrain_steps, sigmoid_rampup
from .semisupervised_losses import UnlabeledLosses, unlabeled_losses
from .token_masking import TokenMasker

if TYPE_CHECKING:  # pragma: no cover
    from .medcontext import LossBreakdown, MedContext

__all__ = ["semi_supervised_losses", "student_views", "teacher_views"]

Output = torch.Tensor | list[torch.Tensor]


def _split(output: Output, sizes: Sequence[int]) -> list[Output]:
    if isinstance(output, (list, tuple)):
        per_head = [torch.split(head, list(sizes)) for head in output]
        return [[heads[i] for heads in per_head] for i in range(len(sizes))]
    return list(torch.split(output, list(sizes)))


def student_views(mc: "MedContext", views: Sequence[tuple[torch.Tensor, torch.Tensor | None]]) -> list[Output]:
    """Student outputs on ``views``: ``(images, mask)`` pairs, ``mask=None`` for the clean view.

    One concatenated forward when ``mc``'s ``student_passes`` allows it for these crops and
    they share one spatial size, otherwise one forward per view.
    """
    shapes = {tuple(images.shape[1:]) for images, _ in views}
    if len(views) == 1 or len(shapes) > 1 or not mc._concatenate_passes(views[0][0]):
        return [mc.network(images) if mask is None else mc.student_masked(images, mask) for images, mask in views]
    sizes = [images.shape[0] for images, _ in views]
    masker = mc.masker
    if isinstance(masker, TokenMasker):
        inputs = [images if mask is None else masker.input(images, mask.to(images.device, torch.bool)) for images, mask in views]
        grid = masker.grid(views[0][0].shape[2:])
        joint = torch.cat(
            [torch.zeros(images.shape[0], *grid, dtype=torch.bool) if mask is None else mask.cpu().bool() for images, mask in views]
        ).to(views[0][0].device)
        with masker.applied(mc.network, joint, views[0][0].shape[2:]):
            return _split(mc.network(torch.cat(inputs)), sizes)
    inputs = [images if mask is None else masker(images, mask.to(images.device, torch.bool)) for images, mask in views]
    return _split(mc.network(torch.cat(inputs)), sizes)


@torch.no_grad()
def teacher_views(mc: "MedContext", batches: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Full-resolution teacher logits of each batch: one forward when the student's passes are
    concatenated too and the batches share a size, else one forward per batch."""
    if len(batches) == 1 or len({tuple(b.shape[1:]) for b in batches}) > 1 or not _joins(mc, batches[0]):
        return [first_head(mc.teacher(b)) for b in batches]
    return list(torch.split(first_head(mc.teacher(torch.cat(list(batches)))), [b.shape[0] for b in batches]))


def _joins(mc: "MedContext", images: torch.Tensor) -> bool:
    """Whether passes run as one concatenated forward ("separate" never; "auto" on CUDA)."""
    if mc.student_passes == "separate":
        return False
    return mc.student_passes == "concat" or images.is_cuda


def _zero_grad_heads(output: Output) -> torch.Tensor | float:
    """``0 * sum`` of the heads after the first, so every parameter gets a (zero) gradient (DDP)."""
    if isinstance(output, (list, tuple)) and len(output) > 1:
        return sum(0.0 * head.float().sum() for head in output[1:])
    return 0.0


def semi_supervised_losses(
    mc: "MedContext",
    images: torch.Tensor,
    labels: torch.Tensor,
    unlabeled: torch.Tensor,
    step: int,
    mask: torch.Tensor | None = None,
) -> "LossBreakdown":
    """Loss terms of one step of ``mc``'s semi-supervised variant (see the module docstring).

    Args:
        mc: a :class:`~medcontext.method.MedContext` built with a semi-supervised variant; its
            ``output_mode`` picks the losses (:func:`~medcontext.method.semisupervised_losses.unlabeled_losses`).
        images: labelled crops (B, C, H, W, D); labels: (B, 1, H, W, D) integer classes (softmax)
            or (B, R, H, W, D) binary regions (sigmoid).
        unlabeled: unlabelled crops (B_u, C, H', W', D'), images only.
        step: the optimizer step (0-based) of the ramp-up and of BCP's labelled-only phase.
        mask: optional fixed tube mask of the labelled crops (B, *grid).
    """
    if unlabeled.ndim != images.ndim or unlabeled.shape[1] != images.shape[1]:
        raise ValueError(
            f"unlabelled crops must be (B_u, C, H, W, D) with the labelled crops' {images.shape[1]} channels, "
            f"got {tuple(unlabeled.shape)}"
        )
    check_step(step, mc.total_steps)
    unlabeled = unlabeled.to(device=images.device, dtype=images.dtype)
    kind = mc.config.unlabeled.crops
    if kind == "masked":
        return _medcontext_step(mc, images, labels, unlabeled, step, mask)
    if kind == "noisy_teacher":
        return _mean_teacher_step(mc, images, labels, unlabeled, step)
    if step < pretrain_steps(mc.total_steps, mc.semi.pretrain):
        return _copy_paste_pretrain_step(mc, images, labels)
    return _copy_paste_step(mc, images, labels, unlabeled)


def _breakdown(total, sup, msl, cl, cl_unlabeled, pseudo, ramp, confident=None) -> "LossBreakdown":
    from .medcontext import LossBreakdown

    ramp = torch.as_tensor(float(ramp), device=sup.device)
    return LossBreakdown(
        total=total, sup=sup, msl=msl, cl=cl, cl_unlabeled=cl_unlabeled, pseudo=pseudo, ramp=ramp, confident=confident
    )


def _medcontext_step(mc, images, labels, unlabeled, step, mask) -> "LossBreakdown":
    semi = mc.semi
    if mask is None:
        mask = mc.draw_mask(images.shape[0], images.shape[2:])
    mask_u = mc.draw_mask(unlabeled.shape[0], unlabeled.shape[2:])
    teacher_x, teacher_u = teacher_views(mc, [images, unlabeled])
    clean, masked, masked_u = student_views(mc, [(images, None), (images, mask), (unlabeled, mask_u)])
    sup = mc.criterion(clean, labels)
    msl = mc.criterion(masked, labels)
    cl = consistency_loss(first_head(masked), teacher_x)
    cl_unlabeled = consistency_loss(first_head(masked_u), teacher_u)
    pseudo = torch.zeros((), device=images.device)
    confident = None
    if mc.config.unlabeled.pseudo_labels == "confidence":
        losses = unlabeled_losses(mc.output_mode)
        pseudo_labels, q = losses.confident_pseudo_labels(teacher_u, semi.confidence)
        pseudo = losses.pseudo_label_loss(first_head(masked_u), pseudo_labels, q)
        confident = q.mean()
    ramp = sigmoid_rampup(step, mc.total_steps, semi.rampup)
    unlabeled_terms = ramp * (semi.consistency_weight * cl_unlabeled + semi.pseudo_weight * pseudo)
    total = sup + msl + mc.beta * cl + unlabeled_terms + _zero_grad_heads(masked_u)
    return _breakdown(total, sup, msl, cl, cl_unlabeled, pseudo, ramp, confident)


def _teacher_noise(mc, unlabeled: torch.Tensor) -> torch.Tensor:
    semi = mc.semi
    if mc.mask_generator is not None:
        noise = torch.randn(unlabeled.shape, generator=mc.mask_generator).to(unlabeled.device, unlabeled.dtype)
    else:
        noise = torch.randn_like(unlabeled)
    return (noise * semi.noise_std).clamp(-semi.noise_clip, semi.noise_clip)


def _mean_teacher_step(mc, images, labels, unlabeled, step) -> "LossBreakdown":
    semi = mc.semi
    (teacher_u,) = teacher_views(mc, [unlabeled + _teacher_noise(mc, unlabeled)])
    clean, clean_u = student_views(mc, [(images, None), (unlabeled, None)])
    sup = mc.criterion(clean, labels)
    cl_unlabeled = unlabeled_losses(mc.output_mode).consistency_mse(first_head(clean_u), teacher_u)
    ramp = sigmoid_rampup(step, mc.total_steps, semi.rampup)
    zero = torch.zeros((), device=images.device)
    total = sup + ramp * semi.consistency_weight * cl_unlabeled + _zero_grad_heads(clean_u)
    return _breakdown(total, sup, zero, zero, cl_unlabeled, zero, ramp)


def _copy_paste_pretrain_step(mc, images, labels) -> "LossBreakdown":
    """BCP's labelled-only phase: crops copy-pasted into each other (all voxels labelled). The
    mask token of ``medcontext_bcp`` joins the graph with a zero gradient (DDP needs every one)."""
    zero = torch.zeros((), device=images.device)
    if mc.masker is not None:
        zero = zero + sum(0.0 * p.float().sum() for p in mc.masker.parameters())
    if images.shape[0] < 2:
        sup = mc.criterion(mc.network(images), labels)
        return _breakdown(sup + zero, sup, zero, zero, zero, zero, 0.0)
    box = box_mask(images.shape[2:], mc.semi.box_ratio, mc.mask_generator)
    mixes = copy_paste(images, images.roll(1, dims=0), box)
    (output,) = student_views(mc, [(mixes.mix_in, None)])
    own, _ = mixes.labeled_voxels()
    head = first_head(output)
    sup = sum(unlabeled_losses(mc.output_mode).split_region_loss(head, labels, labels.roll(1, dims=0), own))
    return _breakdown(sup + zero + _zero_grad_heads(output), sup, zero, zero, zero, zero, 0.0)


def _copy_paste_terms(
    losses: UnlabeledLosses, outputs: Sequence[Output], labels, pseudo_labels, mixes
) -> tuple[torch.Tensor, torch.Tensor]:
    """(labelled-voxel, pseudo-labelled-voxel) Dice + CE (sigmoid: Dice + BCE) of the outputs on
    ``mix_in``, ``mix_out``."""
    labeled_in, labeled_out = mixes.labeled_voxels()
    sup_in, pseudo_in = losses.split_region_loss(first_head(outputs[0]), labels, pseudo_labels, labeled_in)
    sup_out, pseudo_out = losses.split_region_loss(first_head(outputs[1]), labels, pseudo_labels, labeled_out)
    return sup_in + sup_out, pseudo_in + pseudo_out


def _copy_paste_step(mc, images, labels, unlabeled) -> "LossBreakdown":
    semi = mc.semi
    losses = unlabeled_losses(mc.output_mode)
    (teacher_u,) = teacher_views(mc, [unlabeled])
    pseudo_labels = losses.hard_pseudo_labels(teacher_u)
    if semi.largest_component:
        pseudo_labels = losses.largest_component(pseudo_labels)
    mixes = copy_paste(images, unlabeled, box_mask(images.shape[2:], semi.box_ratio, mc.mask_generator))
    views = [(mixes.mix_in, None), (mixes.mix_out, None)]
    if mc.config.unlabeled.masked_mixes:
        batch, spatial = images.shape[0], images.shape[2:]
        views += [(mixes.mix_in, mc.draw_mask(batch, spatial)), (mixes.mix_out, mc.draw_mask(batch, spatial))]
    outputs = student_views(mc, views)
    sup, pseudo = _copy_paste_terms(losses, outputs[:2], labels, pseudo_labels, mixes)
    msl = torch.zeros((), device=images.device)
    if mc.config.unlabeled.masked_mixes:
        masked_sup, masked_pseudo = _copy_paste_terms(losses, outputs[2:], labels, pseudo_labels, mixes)
        msl = masked_sup + semi.pseudo_weight * masked_pseudo
    keep = sum(_zero_grad_heads(o) for o in outputs)
    total = sup + semi.pseudo_weight * pseudo + msl + keep
    zero = torch.zeros((), device=images.device)
    return _breakdown(total, sup, msl, zero, zero, pseudo, 1.0)
