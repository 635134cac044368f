"""``python -m tinymoe``: the main job.

For now a short demo of the engine: a two-block character-level transformer learns to
continue a few sentences, its loss printed as it falls, then it writes a sample. (The
MoE training job with named configs replaces this once the MoE layers exist.)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from tqdm import tqdm

import tinymoe as tm
from tinymoe import functional as F
from tinymoe import nn
from tinymoe.optim import AdamW, clip_grad_norm, warmup_cosine

TEXT = (
    "a mixture of experts sends each token to a few experts. "
    "a router scores the experts and keeps the best k. "
    "a balance loss keeps every expert busy. "
)


class TinyLM(nn.Module):
    """Token + position embeddings, pre-norm transformer blocks, a linear head."""

    def __init__(self, vocab: int, context: int, d_model: int = 48, n_heads: int = 4, n_layers: int = 2):
        self.context = context
        self.tokens = nn.Embedding(vocab, d_model)
        self.positions = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(
            nn.TransformerBlock(d_model, n_heads, nn.FeedForward(d_model, 4 * d_model, "gelu")) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, ids):
        x = self.tokens(ids) + self.positions(np.arange(ids.shape[1]))
        for block in self.blocks:
            x, _ = block(x)
        return self.head(self.norm(x))


def sample(model, stoi, itos, prompt: str, length: int) -> str:
    ids = [stoi[c] for c in prompt]
    with tm.no_grad():
        for _ in range(length):
            logits = model(np.array([ids[-model.context :]]))
            ids.append(int(logits.data[0, -1].argmax()))  # greedy: the most likely next character
    return "".join(itos[i] for i in ids)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tinymoe", description=__doc__.splitlines()[2])
    parser.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    tm.manual_seed(args.seed)
    chars = sorted(set(TEXT))
    stoi, itos = {c: i for i, c in enumerate(chars)}, dict(enumerate(chars))
    data = np.array([stoi[c] for c in TEXT])
    context, batch = 24, 16
    model = TinyLM(len(chars), context)
    optimizer = AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    n_params = sum(p.size for p in model.parameters())
    print(f"tinymoe demo: a {n_params:,}-parameter character transformer on {len(TEXT)} characters of text")

    rng = np.random.default_rng(args.seed)
    start, first_loss = time.perf_counter(), None
    progress = tqdm(range(args.steps), desc="training", unit="step")
    for step in progress:
        starts = rng.integers(0, len(data) - context - 1, size=batch)
        x = np.stack([data[s : s + context] for s in starts])
        y = np.stack([data[s + 1 : s + context + 1] for s in starts])
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        clip_grad_norm(model.parameters(), 1.0)
        optimizer.lr = warmup_cosine(step, 3e-3, warmup_steps=20, total_steps=args.steps, min_lr=3e-4)
        optimizer.step()
        first_loss = loss.item() if first_loss is None else first_loss
        progress.set_postfix(loss=f"{loss.item():.3f}")
        if step % 50 == 0 or step == args.steps - 1:
            progress.write(f"step {step:4d}  loss {loss.item():.3f}")
    progress.close()
    print(f"loss {first_loss:.3f} -> {loss.item():.3f} in {time.perf_counter() - start:.1f}s")
    print("sample:", repr(sample(model, stoi, itos, "a router", 60)))


if __name__ == "__main__":
    main()
