"""Convert a Hugging Face GPT-2, fine-tune it a few steps, compile it with backend="mhc", generate.

A tiny random GPT-2 (2 layers, width 64, byte vocabulary) so it runs in seconds on a CPU; the same
lines work on `GPT2LMHeadModel.from_pretrained("gpt2")`. The text is the Python standard library's own
source, read byte by byte (`mhc_fx.demo.data`). Training runs eagerly by default and the fine-tuned
model is then compiled for inference (one compile, ~15 s cold on 2 CPU cores); `--compile-training`
trains through `torch.compile(model, backend="mhc")` instead (forward and backward compiled, ~30 s cold).

    python examples/convert_hf_gpt2.py [--steps 200] [--compile-training]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

import mhc_fx
from mhc_fx.demo.data import batches, load_splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--compile-training", action="store_true", help="train the compiled model")
    args = parser.parse_args()
    torch.manual_seed(0)

    config = GPT2Config(
        vocab_size=256, n_positions=64, n_embd=64, n_layer=2, n_head=4, bos_token_id=10, eos_token_id=10
    )
    original = GPT2LMHeadModel(config).eval()
    model = mhc_fx.convert(original, mode="mhc", max_history=4)  # a deep copy; still a GPT2LMHeadModel
    print(mhc_fx.explain(model))
    print(f"\nstill a GPT2LMHeadModel: {isinstance(model, GPT2LMHeadModel)}")

    train, _ = load_splits(max_bytes=500_000)
    data = batches(train, batch=8, length=32, generator=torch.Generator().manual_seed(0))
    ids, _ = next(data)
    with torch.no_grad():
        same = torch.equal(original(ids).logits, model(ids).logits)
    print(f"identical to the original at init: {same}")

    model.train()
    step_model = torch.compile(model, backend="mhc") if args.compile_training else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        ids, _ = next(data)
        loss = step_model(input_ids=ids, labels=ids).loss  # GPT-2 shifts the labels itself
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step == 1 or step % 50 == 0 or step == args.steps:
            print(f"step {step:3d}  loss {loss.item():.3f}  ({time.perf_counter() - started:.1f} s)")

    print("\nlearned mixing weights alpha (oldest state first):")
    for site, alpha in mhc_fx.mixing_weights(model).items():
        print(f"  {site:28s} " + " ".join(f"{a:.3f}" for a in alpha.tolist()))

    model.eval()
    compiled = torch.compile(model, backend="mhc")  # the mixing is fused into Inductor's kernels
    with torch.no_grad():
        started = time.perf_counter()
        fast = compiled(ids).logits
        compile_s = time.perf_counter() - started
        err = (fast - model(ids).logits).abs().max().item()
    print(f"\ncompiled with backend='mhc' in {compile_s:.1f} s; max |compiled - eager| = {err:.1e}")

    prompt = torch.tensor([list(b"import ")])
    torch.manual_seed(0)
    out = model.generate(prompt, max_new_tokens=24, do_sample=True, top_k=8, pad_token_id=0)  # KV cache kept
    print(f"\nsampled continuation of 'import ': {bytes(out[0, 7:].tolist()).decode(errors='replace')!r}")


if __name__ == "__main__":
    main()
