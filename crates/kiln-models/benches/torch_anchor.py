#!/usr/bin/env python3
"""PyTorch CPU anchor for `cargo xtask bench models`: the same models and batch as benches/models.rs
(GPT-2 small LM and BERT-base MLM, batch 4 × 128, dropout off), forward under no_grad and
forward + backward; every one of N runs after a warm-up. Prints one JSON object.
Usage: python3 torch_anchor.py [--reps N] [--threads T]
"""

import argparse
import json
import os
import time

import torch
from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

B, S = 4, 128


def timed(reps, f):
    """Seconds of each of `reps` runs after a warm-up."""
    f()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        out.append(time.perf_counter() - t)
    return out


def rates(seconds):
    return [B * S / s for s in seconds]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    out = dict(torch=torch.__version__, threads=a.threads, batch=B, seq=S)

    gpt2 = GPT2LMHeadModel(GPT2Config(attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0)).train()
    ids = torch.randint(0, 50257, (B, S))

    def fwd():
        with torch.no_grad():
            gpt2(input_ids=ids).logits.sum().item()

    def train():
        gpt2.zero_grad()
        gpt2(input_ids=ids, labels=ids).loss.backward()

    out["gpt2_forward_tokens_per_s"] = rates(timed(a.reps, fwd))
    out["gpt2_train_tokens_per_s"] = rates(timed(a.reps, train))

    bert = BertForMaskedLM(BertConfig(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).train()
    ids = torch.randint(0, 30522, (B, S))
    labels = torch.full((B, S), -100)
    labels.view(-1)[::7] = ids.view(-1)[::7]

    def bfwd():
        with torch.no_grad():
            bert(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.sum().item()

    def btrain():
        bert.zero_grad()
        bert(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss.backward()

    out["bert_forward_tokens_per_s"] = rates(timed(a.reps, bfwd))
    out["bert_train_tokens_per_s"] = rates(timed(a.reps, btrain))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
