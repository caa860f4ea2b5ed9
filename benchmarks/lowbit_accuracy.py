"""Accuracy of low-precision optimizer state on a small real task: an MLP on scikit-learn's
bundled handwritten digits (8x8 images, 10 classes), trained with fastgd's AdamW at every
state precision from the same initial weights and the same minibatches.

    pip install -e ".[torch,examples]"
    python benchmarks/lowbit_accuracy.py            # a Markdown table on stdout

Reports, per state precision and seed, the final training loss (the mean over the last
epoch's minibatches), the test accuracy, and the optimizer state's size. ``8bit`` uses
bitsandbytes' default ``min_8bit_size`` (4096: the first layer's weights are 8-bit, the
others full precision); ``8bit, all`` sets it to 0 (every tensor 8-bit, the biases too).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

import fastgd

# (torch and scikit-learn are imported by the functions that use them: asv imports every
# module of this folder when it looks for benchmarks)

PRECISIONS = {"full": {}, "bf16": {"state_precision": "bf16"},
              "8bit": {"state_precision": "8bit"},
              "8bit, all": {"state_precision": "8bit", "min_8bit_size": 0}}


def data(seed: int) -> tuple[Any, ...]:
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.25, random_state=seed, stratify=digits.target)
    return (torch.from_numpy(x_train), torch.from_numpy(y_train),
            torch.from_numpy(x_test), torch.from_numpy(y_test))


def train(options: dict, seed: int, epochs: int, hidden: int = 256
          ) -> tuple[float, float, int]:
    """(final training loss, test accuracy, state bytes) of one run."""
    import torch

    x_train, y_train, x_test, y_test = data(seed)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                                torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                                torch.nn.Linear(hidden, 10))
    opt = fastgd.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2, **options)
    order = np.random.default_rng(seed)
    losses: list[float] = []
    for _ in range(epochs):
        losses = []
        for batch in np.array_split(order.permutation(len(x_train)), len(x_train) // 64):
            index = torch.from_numpy(batch)
            loss = torch.nn.functional.cross_entropy(model(x_train[index]), y_train[index])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    return float(np.mean(losses)), accuracy, opt.state_nbytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    results = {name: [train(options, seed, args.epochs) for seed in range(args.seeds)]
               for name, options in PRECISIONS.items()}
    full_loss = np.array([r[0] for r in results["full"]])
    print(f"MLP 64-256-256-10 on sklearn digits (1347 train / 450 test images), AdamW "
          f"lr 2e-3, {args.epochs} epochs of minibatches of 64, seeds 0-{args.seeds - 1}.\n")
    print("| state | final training loss (per seed) | vs full | test accuracy (per seed) "
          "| state bytes |")
    print("| --- | --- | ---: | --- | ---: |")
    for name, runs in results.items():
        loss = np.array([r[0] for r in runs])
        ratio = np.mean(loss / full_loss)
        print(f"| {name} | {', '.join(f'{v:.4f}' for v in loss)} | {ratio:.3f} | "
              f"{', '.join(f'{r[1]:.3f}' for r in runs)} | {runs[0][2]:,} |")


if __name__ == "__main__":
    main()
