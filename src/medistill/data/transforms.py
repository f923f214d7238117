"""Train-time augmentation on (C, H, W) float tensors in [0, 1] (torchvision v2)."""

from __future__ import annotations


def train_augmentation(strength: str, size: int):
    """``light``: small affine jitter and contrast; ``strong``: adds random resized crops and blur.

    No horizontal flip by default: left/right carries meaning in chest radiographs (heart on the left).
    """
    from torchvision.transforms import v2

    if strength == "none":
        return v2.Identity()
    ops = [v2.RandomAffine(degrees=7, translate=(0.04, 0.04), scale=(0.95, 1.05)),
           v2.ColorJitter(brightness=0.1, contrast=0.1)]
    if strength == "strong":
        ops = [v2.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(0.9, 1.1), antialias=True),
               v2.RandomAffine(degrees=10, translate=(0.06, 0.06)),
               v2.ColorJitter(brightness=0.2, contrast=0.2),
               v2.RandomApply([v2.GaussianBlur(3)], p=0.2)]
    return v2.Compose(ops)
