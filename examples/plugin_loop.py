"""MedContext in a plain PyTorch/MONAI training loop: the lines marked ``# MedContext`` are the
whole change to the loop (README, "Add MedContext to your own loop").

    python examples/plugin_loop.py --steps 20 --roi 32

Trains MONAI's UNETR on random crops of a generated volume (two balls of the same intensity,
told apart by position) and prints the loss terms.
"""

import argparse

import torch
from monai.networks.nets import UNETR

from medcontext import MedContext


def generated_batch(roi: int, batch: int, generator: torch.Generator):
    """(B, 1, roi^3) images and (B, 1, roi^3) labels: left ball = 1, right ball = 2, same intensity."""
    axis = torch.arange(roi, dtype=torch.float32)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    labels = torch.zeros(batch, 1, roi, roi, roi, dtype=torch.long)
    for b in range(batch):
        shift = torch.randint(-2, 3, (3,), generator=generator).float()
        for value, cx in ((1, roi * 0.3), (2, roi * 0.7)):
            r2 = (x - cx - shift[0]) ** 2 + (y - roi / 2 - shift[1]) ** 2 + (z - roi / 2 - shift[2]) ** 2
            labels[b, 0][r2 < (roi / 6) ** 2] = value
    images = (labels > 0).float() + 0.2 * torch.randn(labels.shape, generator=generator)
    return images, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--roi", type=int, default=32, help="crop side, a multiple of 16 (UNETR patch)")
    parser.add_argument("--hidden", type=int, default=96, help="UNETR hidden size (768 in the paper)")
    args = parser.parse_args()
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)

    model = UNETR(1, 3, img_size=(args.roi,) * 3, hidden_size=args.hidden, mlp_dim=2 * args.hidden,
                  num_heads=4, feature_size=8)
    mc = MedContext(model, total_steps=args.steps)  # MedContext
    optimizer = torch.optim.AdamW(mc.parameters(), lr=1e-3)  # MedContext: mc.parameters() adds the mask tokens
    for step in range(args.steps):
        images, labels = generated_batch(args.roi, 2, generator)
        losses = mc.losses(images, labels)  # MedContext: instead of loss_function(model(images), labels)
        loss = losses.total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        mc.update_teacher(step)  # MedContext
        terms = losses.as_floats()
        print(f"step {step + 1:3d}/{args.steps}  " + "  ".join(f"{k} {v:.4f}" for k, v in terms.items()), flush=True)
    # inference: the student is `model` itself (or mc.predict(images, use="teacher"))
    with torch.no_grad():
        model.eval()
        prediction = model(images).argmax(1)
    print("foreground voxels predicted:", int((prediction > 0).sum()), "of", int((labels > 0).sum()))


if __name__ == "__main__":
    main()
