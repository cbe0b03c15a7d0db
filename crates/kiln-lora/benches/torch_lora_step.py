#!/usr/bin/env python3
"""The PyTorch + PEFT side of `cargo xtask bench lora`: one fine-tuning step of GPT-2 small
(transformers' GPT2LMHeadModel, random init), with PEFT LoRA (r 16, α 32, `all-linear`) or in
full — forward, next-token loss, backward, AdamW — on the batch `lora_step.rs` uses. One
configuration per process; prints one JSON object with the step times and the peak RSS.

    python3 torch_lora_step.py --mode lora|full [--threads N] [--reps 5]
"""

import argparse
import json
import resource
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

p = argparse.ArgumentParser()
p.add_argument("--mode", choices=["lora", "full"], default="lora")
p.add_argument("--threads", type=int, default=0)
p.add_argument("--reps", type=int, default=5)
a = p.parse_args()
if a.threads:
    torch.set_num_threads(a.threads)
torch.manual_seed(0)
config = GPT2Config()
model = GPT2LMHeadModel(config)
if a.mode == "lora":
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
total = sum(p.numel() for p in model.parameters())
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
batch, seq = 4, 128
ids = torch.tensor([(i * 2654435761) % config.vocab_size for i in range(batch * seq)]).reshape(batch, seq)
times = []
for i in range(a.reps + 1):
    t = time.perf_counter()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if i >= 1:
        times.append(time.perf_counter() - t)
print(json.dumps({"mode": a.mode, "torch": torch.__version__, "step_s": times,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                  "trainable": trainable, "total": total}))
