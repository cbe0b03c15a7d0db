#!/usr/bin/env python3
"""PyTorch CPU anchor for `cargo xtask bench train`: the same tiny HF-layout BERT and step as
benches/train_step.rs (hidden 64, 2 layers, 4 heads, MLP 128, vocabulary 1024, dropout 0.1,
batch 32 × 64, MLM loss on every 7th position, clip_grad_norm_(1.0), AdamW), every step time
after a warm-up. Prints one JSON object. (There is no MosaicBERT class in transformers.)
Usage: python3 torch_train_step.py [--reps N] [--threads T]
"""

import argparse
import json
import time

import torch
from transformers import BertConfig, BertForMaskedLM

B, S, V = 32, 64, 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=S, hidden_dropout_prob=0.1,
                     attention_probs_dropout_prob=0.1)
    model = BertForMaskedLM(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5 / 1e-3)
    n = B * S
    ids = torch.tensor([(i * 2654435761) % V for i in range(n)]).reshape(B, S)
    labels = torch.tensor([ids.flatten()[i].item() if i % 7 == 3 else -100 for i in range(n)]).reshape(B, S)
    mask = torch.ones(B, S, dtype=torch.long)
    times = []
    for i in range(a.reps + 2):
        t = time.perf_counter()
        opt.zero_grad()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "bert_step_s": times}))


if __name__ == "__main__":
    main()
