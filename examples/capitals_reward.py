"""A reward function for examples/capitals.jsonl, in TRL's signature: ``reward(completions, **columns)``.

Each column of the data arrives as a list aligned with ``completions`` (here ``answer`` and
``question``; ``prompts`` too). ``t2 train`` passes completions as strings; TRL, with chat-format
prompts, as lists of messages: both are read. Returns one float per completion: 1.0 when the gold city is named
(case, accents and punctuation ignored), minus a little for rambling, else 0.0.

    t2 train --data examples/capitals.jsonl --prompt-field question --answer-field answer \\
        --reward examples/capitals_reward.py:reward --domain geography --out runs/capitals
"""

import re
import unicodedata


def _plain(text: str) -> str:
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def _text(completion) -> str:
    if isinstance(completion, list):  # TRL with chat-format prompts: [{"role": "assistant", "content": ...}]
        return " ".join(m.get("content") or "" for m in completion if isinstance(m, dict))
    return str(completion)


def reward(completions, answer, **columns):
    scores = []
    for completion, gold in zip(completions, answer, strict=True):
        said, city = f" {_plain(_text(completion))} ", f" {_plain(gold)} "
        named = city in said
        scores.append((1.0 if named else 0.0) - (0.1 if len(said.split()) > 30 else 0.0))
    return scores
