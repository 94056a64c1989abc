"""The OpenCV path: NSA's ``patch_ex`` blending and labelling, driven by *our* sampled geometry.

This mirrors the official implementation's image operations (``cv2.resize``,
``cv2.seamlessClone``, ``cv2.medianBlur``, scikit-image's disk median) one image at a time,
so tests and benchmarks can compare the batched torch path against it pixel by pixel.
It needs ``opencv-python-headless`` (the ``opencv`` extra); nothing else imports it.
"""

from __future__ import annotations

import numpy as np


def reference_one(dest: np.ndarray, source: np.ndarray, sample: dict, dest_obj: np.ndarray | None,
                  source_obj: np.ndarray | None, tol: float = 1.0, soft: bool = True, resize=None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(image uint8 HxWx3, binary label HxW, soft label HxW or None) for one sampled image.

    ``resize(patch, (w, h))`` defaults to ``cv2.resize``; pass another to isolate the blending.
    """
    import cv2
    from skimage.filters import median
    from skimage.morphology import disk

    mode = cv2.MIXED_CLONE if sample["clone"] == "mixed" else cv2.NORMAL_CLONE
    use_obj = dest_obj is not None and source_obj is not None
    result = dest.copy()
    mask = np.zeros(dest.shape[:2] + (1,), np.uint8)
    for patch in sample["patches"]:
        if patch is None:
            continue
        y0, y1, x0, x1 = patch["src_box"]
        nh, nw = patch["size"]
        dy0, dy1, dx0, dx1 = patch["dst_box"]
        src = (resize or cv2.resize)(np.ascontiguousarray(source[y0:y1, x0:x1]), (nw, nh))
        patch_mask = np.ones((nh, nw, 1), np.uint8)
        if use_obj:
            s_obj = cv2.resize(np.ascontiguousarray(source_obj[y0:y1, x0:x1]).astype(np.uint8), (nw, nh))[..., None]
            d_obj = dest_obj[dy0:dy1, dx0:dx1].astype(np.uint8)[..., None]
            patch_mask &= s_obj | d_obj
            scaled = 255 * (patch_mask | ((1 - s_obj) & (1 - d_obj)))
        else:
            scaled = 255 * patch_mask
        scaled = np.ascontiguousarray(scaled[..., 0])
        scaled[0], scaled[-1], scaled[:, 0], scaled[:, -1] = 0, 0, 0, 0
        if np.sum(scaled > 0) < 50:
            continue
        center = (dx1 - nw // 2, dy0 + nh // 2)
        try:
            result = cv2.seamlessClone(src, result, scaled.copy(), center, mode)  # it erodes its mask in place
        except cv2.error:
            continue
        mask[dy0:dy1, dx0:dx1] = patch_mask
    change = np.mean(np.abs(1.0 * mask * dest - 1.0 * mask * result), axis=-1)
    label = cv2.medianBlur((change > tol).astype(np.uint8), 5)
    if not soft:
        return result, label, None
    k, x0 = sample["logistic"]
    level = np.mean(np.abs(label[..., None] * dest * 1.0 - label[..., None] * result * 1.0), axis=-1)
    level = median(level, disk(5))
    return result, label, label / (1 + np.exp(-k * (level - x0)))
