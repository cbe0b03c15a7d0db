#!/usr/bin/env python3
"""The PyTorch side of `cargo xtask bench lora`: the same work as `kiln lora extract` and
`kiln lora spectrum` on the same checkpoints, written the way a Python user would (safetensors'
`load_file`, `torch.linalg.svd` / `svdvals` in f32, all cores).

    python3 xtask/lora_anchor.py extract BASE FT OUT_FILE MAX_RANK
    python3 xtask/lora_anchor.py spectrum BASE FT

Both treat every 2-D `.weight` except embeddings (`wte`, `wpe`) as a linear layer; GPT-2's
`Conv1D` weights are transposed to `[out, in]` first, as kiln does. `spectrum` computes, per
changed matrix, what kiln computes: singular values of ΔW, of W and of a Gaussian matrix of ΔW's
shape, and the full SVDs of W and W_ft for the intruder test (top 10, ε 0.5).
"""

import sys

import torch
from safetensors.torch import load_file, save_file

CONV1D = ("c_attn", "c_proj", "c_fc")


def load(path):
    import glob
    import os
    out = {}
    for f in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
        out.update(load_file(f))
    return out


def pairs(base, ft):
    for name, w in base.items():
        if w.dim() != 2 or not name.endswith(".weight") or name.endswith(("wte.weight", "wpe.weight")):
            continue
        b, f = w.float(), ft[name].float()
        if name.rsplit(".", 2)[-2] in CONV1D:
            b, f = b.T, f.T
        if torch.equal(b, f):
            continue
        yield name, b, f


def extract(base_dir, ft_dir, out_file, max_rank):
    base, ft = load(base_dir), load(ft_dir)
    tensors = {}
    for name, b, f in pairs(base, ft):
        u, s, vh = torch.linalg.svd(f - b, full_matrices=False)
        r = min(max_rank, s.numel())
        root = s[:r].sqrt()
        module = name[: -len(".weight")]
        tensors[f"base_model.model.{module}.lora_A.weight"] = (root[:, None] * vh[:r]).contiguous()
        tensors[f"base_model.model.{module}.lora_B.weight"] = (u[:, :r] * root).contiguous()
    save_file(tensors, out_file)


def spectrum(base_dir, ft_dir):
    base, ft = load(base_dir), load(ft_dir)
    gen = torch.Generator().manual_seed(0)
    results = []
    for name, b, f in pairs(base, ft):
        d = f - b
        s = torch.linalg.svdvals(d)
        e = s.square().cumsum(0)
        rank = int(torch.searchsorted(e, 0.9 * e[-1]).item()) + 1
        torch.linalg.svdvals(b)
        g = torch.randn(d.shape, generator=gen)
        torch.linalg.svdvals(g * (d.norm() / g.norm()))
        ub = torch.linalg.svd(b, full_matrices=False)[0]
        uf = torch.linalg.svd(f, full_matrices=False)[0]
        cos = (uf[:, :10].T @ ub).abs().max(dim=1).values
        results.append((name, rank, int((cos < 0.5).sum())))
    print(f"{len(results)} matrices")


if __name__ == "__main__":
    if sys.argv[1] == "extract":
        extract(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    elif sys.argv[1] == "spectrum":
        spectrum(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
