#!/usr/bin/env python3
"""Converts scikit-learn's bundled copy of the UCI "Optical Recognition of Handwritten Digits"
test set (1,797 grey-scale 8×8 images, pixel values 0..16, 10 classes; E. Alpaydin and
C. Kaynak, 1998; licence CC BY 4.0, https://doi.org/10.24432/C50P49) into `digits.safetensors`,
which `kiln_data::images::ImageSet::digits()` embeds:

- `images`: u8 `[1797, 8, 8]`, the pixel counts 0..16 as sklearn ships them;
- `labels`: u8 `[1797]`, the digit;
- metadata: `max_value` 16, `classes` 10, `licence`, `source`, `creator`, `sklearn`.

Regenerate (CPU):
    python3 -m venv ~/.venvs/ref && ~/.venvs/ref/bin/pip install numpy safetensors scikit-learn
    ~/.venvs/ref/bin/python crates/kiln-data/data/make_digits.py
"""

import json
import os
import struct

import numpy as np
import sklearn
from sklearn.datasets import load_digits

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.safetensors")


def save_file(tensors, path, metadata):
    """safetensors with a key-sorted header (the `safetensors` package orders metadata at
    random, so its files differ between runs)."""
    header, offset, blobs = {"__metadata__": metadata}, 0, []
    for name, a in tensors.items():
        assert a.dtype == np.uint8
        blob = a.tobytes()
        header[name] = {"dtype": "U8", "shape": list(a.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def main():
    d = load_digits()
    images = d.images.astype(np.uint8)
    assert images.shape == (1797, 8, 8) and images.max() == 16
    assert np.array_equal(images.astype(np.float64), d.images)
    labels = d.target.astype(np.uint8)
    save_file(
        {"images": np.ascontiguousarray(images), "labels": labels},
        OUT,
        metadata={
            "name": "digits",
            "max_value": "16",
            "classes": "10",
            "licence": "CC BY 4.0",
            "source": "UCI ML Optical Recognition of Handwritten Digits, test set, as bundled by scikit-learn (https://doi.org/10.24432/C50P49)",
            "creator": "E. Alpaydin, C. Kaynak (1998)",
            "sklearn": sklearn.__version__,
        },
    )
    print(f"wrote {OUT}: {images.shape[0]} images, classes {np.bincount(labels).tolist()}")


if __name__ == "__main__":
    main()
