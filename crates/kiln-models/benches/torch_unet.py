#!/usr/bin/env python3
"""diffusers CPU anchor for `cargo xtask bench diffusion`: the same UNets, inputs and steps as
benches/unet.rs — SD2-base's UNet (random weights) forward + backward on one 64×64 latent with 77
text states (loss = mean(out²)), and a sampling step (a guided forward, batch 2, no_grad) of it
and of diffusers' tiny test UNet; every one of N runs after a warm-up. Prints one JSON object.
Usage: python3 torch_unet.py [--reps N] [--threads T]
"""

import argparse
import json
import time

import diffusers
import torch
from diffusers import UNet2DConditionModel

SD2_BASE = dict(
    act_fn="silu", attention_head_dim=[5, 10, 20, 20], block_out_channels=[320, 640, 1280, 1280],
    cross_attention_dim=1024,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    flip_sin_to_cos=True, freq_shift=0, in_channels=4, out_channels=4, layers_per_block=2, norm_eps=1e-5,
    norm_num_groups=32, sample_size=64, use_linear_projection=True,
)
TINY = dict(
    block_out_channels=[4, 8], norm_num_groups=4, cross_attention_dim=8,
    down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
    attention_head_dim=2, in_channels=4, out_channels=4, layers_per_block=1, sample_size=16,
)


def timed(reps, f):
    f()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        out.append(time.perf_counter() - t)
    return out


def inputs(cfg, batch, tokens):
    s = cfg["sample_size"]
    return (torch.randn(batch, cfg["in_channels"], s, s), torch.tensor([500]),
            torch.randn(batch, tokens, cfg["cross_attention_dim"]))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    out = {"torch": torch.__version__, "diffusers": diffusers.__version__, "threads": torch.get_num_threads()}
    for key, cfg, tokens, n in [("tiny", TINY, 4, 20 * a.reps), ("sd2", SD2_BASE, 77, a.reps)]:
        m = UNet2DConditionModel(**cfg).eval()
        if key == "sd2":
            out["sd2_params"] = sum(p.numel() for p in m.parameters())
        x, t, e = inputs(cfg, 2, tokens)
        with torch.no_grad():
            out[f"{key}_sample_step_s"] = timed(n, lambda: m(x, t, e).sample)
        del m
    m = UNet2DConditionModel(**SD2_BASE).train()
    x, t, e = inputs(SD2_BASE, 1, 77)

    def step():
        m.zero_grad(set_to_none=True)
        m(x, t, e).sample.pow(2).mean().backward()

    out["sd2_train_step_s"] = timed(a.reps, step)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
