"""Writes pil_resize.json: PIL's bilinear resize of a float image, the reference for the
antialiased bilinear resize (PIL's ImagingResample and PyTorch's _upsample_bilinear2d_aa use the
same weights; PIL computes in double precision).

Run: python3 pil_resize.py  (needs pillow and numpy)
"""
import json

import numpy as np
from PIL import Image

H, W = 13, 17
y, x = np.mgrid[0:H, 0:W]
# Must match `input_value` in tests/it/resize_reference.rs.
src = (((x * 7 + y * 13 + (x * y) % 5) % 11) / 10.0).astype(np.float32)
cases = []
for oh, ow in [(5, 7), (20, 31), (13, 9), (6, 17), (4, 40), (1, 1)]:
    out = Image.fromarray(src, mode="F").resize((ow, oh), Image.BILINEAR)
    cases.append({"height": oh, "width": ow, "values": np.asarray(out, dtype=np.float64).ravel().tolist()})
with open("pil_resize.json", "w") as f:
    json.dump({"height": H, "width": W, "cases": cases}, f)
