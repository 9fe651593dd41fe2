"""Two-pass self-adaptive inference: decide what a request needs, then answer with adapted weights.

Strategies (``AdaptiveModel(svf, tokenizer, experts, strategy=...)``):

* ``prompt`` — the base model classifies the request into one of the experts' domains or
  ``others`` (``\\boxed{label}``); ``others`` is answered with the base weights.
* ``classifier`` — the same first pass, but with the classification expert applied
  (trained with ``t2 train --task classify``).
* ``fewshot`` — a mixture z' = 1 + Σ α_k (z_k − 1) found by the Cross-Entropy Method on a few labelled
  examples of the target task (:func:`cem_search`), then used for every request.
* ``probe`` — a cheap first pass: a linear probe on an early layer of the base model reads the
  label from the request alone (:mod:`transformer_squared.probe`, trained with ``t2 train-router``).
* ``oracle`` — the expert of the request's known domain; ``none`` — the base model.

The first pass costs one prefill, not a generation: the label is read from the next-token
distribution after ``\\boxed{`` (labels whose first tokens collide are scored in full).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .errors import T2Error
from .experts import Expert
from .scoring import continuation_logprobs, last_logits, mean_reference_loglik

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from .svf import SVFModel
    from .tasks.base import TaskProtocol

STRATEGIES = ("none", "oracle", "prompt", "classifier", "probe", "fewshot")
PAPER_DOMAINS = ("math", "code", "reasoning")
OTHERS = "others"


def _task_domains() -> dict[str, str]:
    from .tasks import DOMAINS

    return {name: d for name, d in DOMAINS.items() if d and d not in ("classify", "generic")}


# The domain of each bundled task (its class's ``domain``): which expert serves it for ``oracle``.
TASK_DOMAINS = _task_domains()


def task_domain(task: TaskProtocol) -> str | None:
    """The domain of a task object: a user task's ``expert_domain``, else its class's ``domain``."""
    return getattr(task, "expert_domain", None) or TASK_DOMAINS.get(task.name) or None


def expert_domain(expert: Expert) -> str:
    """An expert's domain label: meta ``domain``, else its task's domain, else its name."""
    meta = expert.meta
    if meta.get("domain"):
        return str(meta["domain"])
    task = meta.get("task")
    if task in TASK_DOMAINS:
        return TASK_DOMAINS[task]
    return expert.name


@dataclass
class Route:
    """What the first pass decided for one request."""

    label: str
    expert: Expert | None
    fallback: bool = False
    scores: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        who = "base" if self.expert is None else self.expert.name
        extra = " (fallback: first pass gave no usable label)" if self.fallback else ""
        return f"{self.label} -> {who}{extra}"


class AdaptiveModel:
    """A wrapped model plus experts that routes each request before answering it.

    Args:
        svf: the :class:`~transformer_squared.svf.SVFModel` wrapping the model.
        tokenizer: its tokenizer.
        experts: the task experts (their domains become the labels).
        strategy: one of :data:`STRATEGIES`.
        classifier: the classification expert (``strategy="classifier"``).
        mixture: the expert used for every request (``strategy="fewshot"``; see :func:`cem_search`).
        min_label_mass: when the labels' total probability after ``\\boxed{`` is below this, the
            first pass is garbage: the request falls back to the base weights (counted).
        router: the early-layer probe (``strategy="probe"``; see :class:`~transformer_squared.probe.ProbeRouter`).
    """

    def __init__(
        self,
        svf: SVFModel,
        tokenizer: PreTrainedTokenizerBase,
        experts: Sequence[Expert],
        strategy: str = "prompt",
        classifier: Expert | None = None,
        mixture: Expert | None = None,
        min_label_mass: float = 0.01,
        router=None,
    ) -> None:
        if strategy not in STRATEGIES:
            raise T2Error(f"unknown adaptation strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
        experts = list(experts)
        if not experts and strategy != "none":
            raise T2Error(f"strategy {strategy!r} needs at least one expert (--experts DIR ...)")
        self.svf = svf
        self.tokenizer = tokenizer
        self.strategy = strategy
        self.experts: dict[str, Expert] = {}
        for e in experts:
            e.check_compatible(svf, strict=True)
            label = expert_domain(e)
            if label in self.experts or label == OTHERS:
                raise T2Error(
                    f"two experts claim the domain {label!r} ({self.experts.get(label, e).name!r} "
                    f"and {e.name!r}); give one a different meta 'domain'"
                )
            self.experts[label] = e
        if strategy == "classifier":
            if classifier is None:
                raise T2Error("strategy 'classifier' needs the classification expert (--classifier DIR)")
            classifier.check_compatible(svf, strict=True)
        if strategy == "probe" and router is None:
            raise T2Error("strategy 'probe' needs the early-layer router (--router DIR, made by t2 train-router)")
        if strategy == "fewshot" and mixture is None:
            raise T2Error("strategy 'fewshot' needs the mixture found by cem_search (or run t2 eval --adapt fewshot)")
        self.classifier = classifier
        self.mixture = mixture
        self.router = router
        self.min_label_mass = min_label_mass
        self.stats = {"requests": 0, "fallbacks": 0, "first_pass_seconds": 0.0}
        labels = list(self.experts)
        if strategy == "prompt":
            # The paper's fixed categories plus any other expert domains; a category without an
            # expert is answered with the base weights, like "others".
            labels = list(dict.fromkeys([*PAPER_DOMAINS, *self.experts])) + [OTHERS]
        elif strategy == "classifier":
            trained = classifier.meta.get("labels") if classifier is not None else None
            if trained:
                labels = [lab for lab in trained]
        elif strategy == "probe":
            labels = list(router.labels)
        self.labels = labels
        self._label_ids: list[list[int]] | None = None

    # -- the first pass ------------------------------------------------------------------
    def _classify_prompts(self, texts: Sequence[str]) -> list[str]:
        from .tasks import get_task
        from .tasks.classify import Classify

        task = get_task("classify", labels=tuple(self.labels))
        assert isinstance(task, Classify)
        return [task.prompt_for(t, self.tokenizer) + "\\boxed{" for t in texts]

    def _label_token_ids(self) -> list[list[int]]:
        if self._label_ids is None:
            tok = self.tokenizer
            prefix = tok("\\boxed{", add_special_tokens=False)["input_ids"]
            out = []
            for lab in self.labels:
                joint = tok("\\boxed{" + lab, add_special_tokens=False)["input_ids"]
                ids = (
                    joint[len(prefix) :]
                    if joint[: len(prefix)] == prefix
                    else tok(lab, add_special_tokens=False)["input_ids"]
                )
                if not ids:
                    raise T2Error(f"label {lab!r} tokenizes to nothing")
                out.append(ids)
            self._label_ids = out
        return self._label_ids

    @torch.no_grad()
    def label_scores(self, texts: Sequence[str], batch_size: int = 16) -> list[dict[str, float]]:
        """Probability of each label (and ``_mass``, their total) for each request, one prefill each."""
        model, tok = self.svf.model, self.tokenizer
        device = next(model.parameters()).device
        label_ids = self._label_token_ids()
        firsts = [ids[0] for ids in label_ids]
        distinct = len(set(firsts)) == len(firsts)
        prompts = self._classify_prompts(texts)
        results: list[dict[str, float]] = []
        old = tok.padding_side
        tok.padding_side = "left"
        try:
            for s in range(0, len(prompts), batch_size):
                chunk = prompts[s : s + batch_size]
                if distinct:
                    enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                    logp = torch.log_softmax(last_logits(model, enc).float(), dim=-1)
                    for row in logp:
                        probs = {lab: math.exp(row[f].item()) for lab, f in zip(self.labels, firsts, strict=True)}
                        results.append(_with_mass(probs))
                else:  # first tokens collide: score each full label sequence
                    results.extend(self._full_label_scores(chunk, label_ids, device))
        finally:
            tok.padding_side = old
        return results

    def _full_label_scores(self, prompts, label_ids, device) -> list[dict[str, float]]:
        tok = self.tokenizer
        prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        pairs = [(pid, ids) for pid in prompt_ids for ids in label_ids]
        sums, _ = continuation_logprobs(self.svf.model, tok.pad_token_id, pairs, device)
        n_labels = len(self.labels)
        return [
            _with_mass({lab: math.exp(sums[i * n_labels + j].item()) for j, lab in enumerate(self.labels)})
            for i in range(len(prompts))
        ]

    def _classifier_weights(self, texts: Sequence[str]):
        """The classifier's weights for one first pass, the caller's z left as it was.

        Few tokens: the factored path with one broadcast row (no W' to build). Many tokens: the
        merged path, W' built once for the whole pass, which is cheaper past a break-even point
        (on the default model, 2 CPU cores: merging all 90 matrices 0.86 s, the factored path
        ~0.6 ms more per prompt token than merged; even at ~1,400 tokens).
        """
        n_tokens = sum(
            len(ids) for ids in self.tokenizer(self._classify_prompts(texts), add_special_tokens=False)["input_ids"]
        )
        classifier = self.classifier
        assert classifier is not None  # strategy "classifier": __init__ refuses it without one
        if n_tokens >= self.merge_min_tokens:
            return self.svf.applied(classifier)  # merged, the caller's z restored after
        return self.svf.rows([classifier])

    #: prompt tokens in one first pass from which the classifier is merged instead of factored
    merge_min_tokens: int = 1400

    def chooser(
        self, domain: str | None = None, record: dict[str, Route] | None = None
    ) -> Callable[[Sequence[Any]], list[Expert | None]]:
        """The first pass as ``evaluate(..., choose_experts=...)`` takes it: task items in, one expert each out.

        Each item is routed by its question (the request alone, the text the classifier and the probe
        are trained on); ``domain`` is the task's known domain (``oracle`` only); ``record``, when
        given, is filled with each item's :class:`Route` by item id.
        """

        def choose(items: Sequence[Any]) -> list[Expert | None]:
            routes = self.route([it.question for it in items], domains=[domain] * len(items))
            if record is not None:
                record.update({it.id: r for it, r in zip(items, routes, strict=True)})
            return [r.expert for r in routes]

        return choose

    def route(self, texts: Sequence[str], domains: Sequence[str | None] | None = None) -> list[Route]:
        """Decide an expert (or None = base) for each request text.

        ``domains`` gives the known domain of each request, used only by ``oracle``.
        """
        t0 = time.perf_counter()
        routes: list[Route]
        if self.strategy == "none":
            routes = [Route("base", None) for _ in texts]
        elif self.strategy == "fewshot":
            routes = [Route("fewshot", self.mixture) for _ in texts]
        elif self.strategy == "oracle":
            if domains is None:
                raise T2Error("strategy 'oracle' needs each request's domain (the task is known)")
            routes = [Route(d or OTHERS, self.experts.get(d or "")) for d in domains]
        elif self.strategy == "probe":
            with self.svf.disabled():
                probs = self.router.probabilities(self.svf.model, self.tokenizer, texts)
            routes = []
            for row in probs.tolist():
                sc = dict(zip(self.labels, row, strict=True))
                best = max(sc, key=sc.__getitem__)
                routes.append(Route(best, self.experts.get(best), scores=_with_mass(sc)))
        else:
            if self.strategy == "classifier":
                with self._classifier_weights(texts):
                    scores = self.label_scores(texts)
            else:
                with self.svf.disabled():
                    scores = self.label_scores(texts)
            routes = []
            for sc in scores:
                probs = {k: v for k, v in sc.items() if k != "_mass"}
                best = max(probs, key=probs.__getitem__)
                if sc["_mass"] < self.min_label_mass:
                    routes.append(Route(OTHERS, None, fallback=True, scores=sc))
                else:
                    routes.append(Route(best, self.experts.get(best), scores=sc))
        self.stats["requests"] += len(texts)
        self.stats["fallbacks"] += sum(r.fallback for r in routes)
        self.stats["first_pass_seconds"] += time.perf_counter() - t0
        return routes

    # -- the second pass -------------------------------------------------------------------
    def generate(
        self,
        texts: Sequence[str],
        *,
        max_new_tokens: int = 256,
        batch_size: int = 8,
        temperature: float = 0.0,
        domains: Sequence[str | None] | None = None,
    ):
        """Route, then answer every request in one mixed-expert batch: [(Route, Generation)]."""
        from .generation import generate
        from .tasks.base import render_prompt

        routes = self.route(texts, domains)
        prompts = [render_prompt([{"role": "user", "content": t}], self.tokenizer) for t in texts]
        gens = generate(
            self.svf.model,
            self.tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            temperature=temperature,
            svf=self.svf,
            experts=[r.expert for r in routes],
        )
        return list(zip(routes, gens, strict=True))


def _with_mass(probs: dict[str, float]) -> dict[str, float]:
    out = dict(probs)
    out["_mass"] = sum(probs.values())
    return out


# ---------------------------------------------------------------------------------------
# Few-shot adaptation: the Cross-Entropy Method over mixing weights
# ---------------------------------------------------------------------------------------
@dataclass
class CEMConfig:
    """Settings of the few-shot search (the paper: population 32, elite ratio 0.2)."""

    population: int = 32
    elite_ratio: float = 0.2
    iterations: int = 10
    init_std: float = 0.3
    min_std: float = 0.02
    clamp: tuple[float, float] = (-0.5, 1.5)
    per_matrix: bool = False
    seed: int = 0
    max_new_tokens: int | None = None
    batch_size: int = 16
    #: how a candidate is scored on the shots: ``generate`` (greedy answers, the task's checker) or
    #: ``loglik`` (multiple choice: options scored in ``channel`` with ``norm``)
    mode: str = "generate"
    channel: str = "cloze"
    norm: str = "token"


def cem_search(
    svf: SVFModel,
    tokenizer: PreTrainedTokenizerBase,
    task: TaskProtocol,
    experts: Sequence[Expert],
    shots: Sequence,
    config: CEMConfig | None = None,
    progress: bool = True,
    log: Callable[[dict], None] | None = None,
) -> tuple[Expert, list[dict]]:
    """Find mixing weights α for ``experts`` that do best on ``shots`` (labelled items).

    In ``generate`` mode each candidate α is scored by the number of shots answered correctly
    (greedy), ties broken by the mean log-likelihood of the reference answers. In ``loglik`` mode
    (multiple-choice tasks) the fitness is the expected accuracy: the mean probability of the gold
    option under a softmax over the options' normalised log-likelihoods (the quantity
    ``t2 train --objective exact`` maximises), which separates candidates that answer the same
    shots right; ties are broken by the number answered correctly. Returns the best mixture (an
    :class:`Expert` with the search in its metadata) and the per-iteration history.
    """
    from tqdm.auto import tqdm

    from .evaluation import evaluate

    cfg = config or CEMConfig()
    experts = list(experts)
    if not experts:
        raise T2Error("few-shot adaptation needs at least one expert")
    if not shots:
        raise T2Error("few-shot adaptation needs labelled examples")
    if cfg.population < 2 or not 0 < cfg.elite_ratio <= 1 or cfg.iterations < 1:
        raise T2Error("CEM needs population >= 2, 0 < elite_ratio <= 1 and iterations >= 1")
    if cfg.mode not in ("generate", "loglik"):
        raise T2Error(f"CEM mode must be 'generate' or 'loglik', got {cfg.mode!r}")
    if cfg.mode == "loglik":
        from .tasks.multiple_choice import is_multiple_choice

        if not is_multiple_choice(task):
            raise T2Error(f"CEM in loglik mode scores options; {task.name!r} is not a multiple-choice task")
    k = len(experts)
    n_mat = len(experts[0].z)
    shape = (k, n_mat) if cfg.per_matrix else (k,)
    gen = torch.Generator().manual_seed(cfg.seed)
    mean = torch.full(shape, 1.0 / k)
    std = torch.full(shape, cfg.init_std)
    n_elite = max(1, int(round(cfg.population * cfg.elite_ratio)))
    best: tuple[tuple[float, float], torch.Tensor] | None = None
    history: list[dict] = []
    cache: dict[tuple, tuple[float, float]] = {}

    def score(alpha: torch.Tensor) -> tuple[float, float]:
        key = tuple(round(v, 6) for v in alpha.flatten().tolist())
        if key in cache:
            return cache[key]
        svf.apply(Expert.mix(experts, alpha, name="candidate"))
        if cfg.mode == "loglik":
            cache[key] = _expected_accuracy(svf.model, tokenizer, task, list(shots), cfg)
            return cache[key]
        summary, _ = evaluate(
            svf.model,
            tokenizer,
            task,
            list(shots),
            split="fewshot",
            batch_size=cfg.batch_size,
            max_new_tokens=cfg.max_new_tokens,
            progress=False,
        )
        ll = mean_reference_loglik(svf, tokenizer, task, list(shots), cfg.batch_size) or 0.0
        cache[key] = (float(summary.correct), ll)
        return cache[key]

    bar = tqdm(range(cfg.iterations), desc="CEM", disable=not progress, unit="iter")
    try:
        for it in bar:
            samples = mean + std * torch.randn((cfg.population, *shape), generator=gen)
            samples = samples.clamp(*cfg.clamp)
            if it == 0:
                samples[0] = mean  # always try the uniform mixture
            scores = [score(a) for a in samples]
            order = sorted(range(len(samples)), key=lambda i: scores[i], reverse=True)
            elite = samples[order[:n_elite]]
            mean = elite.mean(0)
            std = elite.std(0, unbiased=False).clamp_min(cfg.min_std) if n_elite > 1 else std * 0.5
            top = scores[order[0]]
            if best is None or top > best[0]:
                best = (top, samples[order[0]].clone())
            if cfg.mode == "loglik":
                row = {
                    "iteration": it,
                    "best_expected": round(best[0][0], 4),
                    "best_correct": best[0][1],
                    "iter_best_expected": round(top[0], 4),
                }
            else:
                row = {
                    "iteration": it,
                    "best_correct": best[0][0],
                    "best_loglik": round(best[0][1], 4),
                    "iter_best_correct": top[0],
                }
            row["mean_alpha"] = mean.mean(-1).tolist() if cfg.per_matrix else mean.tolist()
            history.append(row)
            if log:
                log(row)
            if cfg.mode == "loglik":
                bar.set_postfix(expected=f"{best[0][0]:.3f}", correct=f"{best[0][1]:.0f}/{len(shots)}")
            else:
                bar.set_postfix(correct=f"{best[0][0]:.0f}/{len(shots)}")
    finally:
        bar.close()
        svf.reset()
    assert best is not None
    mixture = Expert.mix(experts, best[1], name=f"fewshot-{task.name}")
    mixture.meta["task"] = task.name
    mixture.meta["domain"] = f"fewshot-{task.name}"
    fitness = (
        {"expected_accuracy": best[0][0], "correct": best[0][1]}
        if cfg.mode == "loglik"
        else {"correct": best[0][0], "loglik": best[0][1]}
    )
    mixture.meta["fewshot"] = {
        "shots": [str(s.id) for s in shots],
        **fitness,
        "config": {k_: (list(v) if isinstance(v, tuple) else v) for k_, v in cfg.__dict__.items()},
        "history": history,
    }
    return mixture, history


def _expected_accuracy(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, task: TaskProtocol, shots: list, cfg: CEMConfig
) -> tuple[float, float]:
    """(mean probability of the gold option, number of shots whose top option is gold)."""
    from .scoring import score_options
    from .tasks.multiple_choice import is_multiple_choice

    assert is_multiple_choice(task)  # cem_search refuses loglik mode for other tasks
    requests = [task.requests(it, cfg.channel, tokenizer) for it in shots]
    with torch.no_grad():
        scores = score_options(model, tokenizer, requests, batch_size=cfg.batch_size)
    expected = correct = 0.0
    for it, sc in zip(shots, scores, strict=True):
        s = sc.normalised(cfg.norm).float()
        gold = task.gold_index(it)
        expected += float(torch.softmax(s, -1)[gold])
        correct += float(int(torch.argmax(s)) == gold)
    return expected / len(shots), correct


def describe_scores(scores: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.2f}" for k, v in scores.items() if k != "_mass")
