"""Write a randomly initialised copy of a model's architecture (config + tokenizer, no trained weights).

    python bench/random_model.py --like FOLDER_OR_default --out DIR

Speed does not depend on the weights' values, so the speed benchmarks can run on a machine that
cannot hold or download the real model (for instance a GPU machine with no network). Greedy
generation from random weights rarely emits EOS, so every row generates the full
``--new-tokens``/``--max-new-tokens`` asked for: the token counts are fixed, as a benchmark wants.
Quality numbers must never be taken from such a model.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--like", required=True, help="a model folder with config.json + tokenizer, or 'default'")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    like = Path(args.like)
    if args.like == "default" and not like.exists():
        from transformer_squared.models import default_model_dir

        like = default_model_dir(progress=False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(like)
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (like / name).is_file():
            shutil.copy2(like / name, out / name)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}: random {config.model_type} with {n:,} parameters (the architecture of {like})")


if __name__ == "__main__":
    main()
