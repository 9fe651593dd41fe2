"""Pieces the benchmarks share: the device they ran on, the same chat prompts and the same random experts,
and running a ``t2`` command with its output appended to a log."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

QUESTIONS = [
    "What is 17 times 23?",
    "Write a Python function that checks whether a number is prime.",
    "Why does ice float on water?",
    "A train travels 60 km in 45 minutes. What is its speed in km/h?",
    "Write a Python function to merge two sorted lists.",
    "What causes the seasons on Earth?",
]


def device_name(device: str) -> str:
    """What a benchmark ran on, for its JSON: the GPU's name, or the CPU with its cores and torch threads."""
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def chat_prompts(tokenizer, n: int) -> list[str]:
    """``n`` chat-formatted prompts cycling through :data:`QUESTIONS`."""
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], tokenize=False, add_generation_prompt=True
        )
        for i in range(n)
    ]


def random_experts(svf, k: int, scale: float = 0.02) -> list:
    """``k`` experts with z = 1 + scale·N(0, 1) (seeds 0..k-1); ``svf`` is reset afterwards."""
    experts = []
    for i in range(k):
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in svf.parameters():
                p.copy_(1 + scale * torch.randn(p.shape, generator=g).to(p.device))
        experts.append(svf.to_expert(f"e{i}"))
    svf.reset()
    return experts


def run_t2(*args: str, log: Path, cwd: Path) -> None:
    """``t2 ARGS`` in a child process (the project's own command), its output appended to ``log``."""
    with open(log, "a") as fh:
        fh.write("$ t2 " + " ".join(args) + "\n")
        fh.flush()
        subprocess.run(
            [sys.executable, "-m", "transformer_squared.cli", *args],
            check=True,
            cwd=cwd,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
