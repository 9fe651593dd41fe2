"""Your own task: prompts and answers from a JSONL/CSV file, a ``datasets`` dataset, a list of dicts or a Hub id.

    from transformer_squared.tasks import get_task
    task = get_task("generic", source="examples/capitals.jsonl", prompt_field="question",
                    answer_field="answer", reward="examples/capitals_reward.py:reward", domain="geography")

* **Fields.** ``prompt_field`` holds the question (a string, or a list of chat messages as in TRL's
  conversational datasets); ``answer_field`` the gold answer (a string, a number, or a list of
  accepted answers). Every field of a record is kept and handed to a reward function.
* **Prompt.** ``template`` (``str.format`` over the record's fields, e.g. ``"Q: {q}"``) builds the
  user turn; ``instruction`` is put before it; ``chat=False`` sends the text without the
  tokenizer's chat template.
* **Checking.** ``check="exact"`` (the stripped completion equals an answer), ``"normalized"``
  (the completion's answer, i.e. the text after "answer is"/"Answer:" or else its first line, equals
  an answer after lower-casing and dropping punctuation, articles and extra spaces), ``"numeric"``
  (the final number, compared exactly), ``"choice"`` (multiple choice: ``choices_field`` lists the
  options, the answer is a letter, a 0-based index or the option text; also scored by
  log-likelihood, ``t2 eval --mode loglik``, and trainable with ``--objective exact``), or
  ``reward=`` a callable with TRL's signature ``reward(completions, **columns) -> list[float]``
  (or ``"pkg.module:function"`` / ``"path/file.py:function"``). With a reward function, accuracy
  counts a completion as correct when its reward is above ``correct_above`` (default 0).
* **Splits.** A ``split`` field on every record (train/val/test/fewshot), or a seeded hash
  partition: ``test_fraction`` and ``val_fraction`` (default 0.1 each) of the records, the rest
  for training. The partition depends only on each record's id (its ``id`` field, else a hash of
  its prompt), so adding records never moves the old ones.
* **Identity.** ``domain`` (default: the file's stem) names the task and is written into the
  expert's metadata, so routing sees the user's label and not a built-in task's.

Nothing here is cached on disk: user data are read again on every run.
"""

from ..base import TaskProtocol
from .data import RESERVED_DOMAINS, SEED, UserData
from .factory import SHIPPED_DOMAINS, check_domain, generic_task, prepare_task, stamp_domain
from .files import DataSource
from .reward import RewardTask, load_reward
from .task import CHECKS, GenericChoiceTask, GenericTask, free_text_answer, normalize_answer

__all__ = [
    "CHECKS",
    "DataSource",
    "GenericChoiceTask",
    "GenericTask",
    "RESERVED_DOMAINS",
    "RewardTask",
    "SEED",
    "SHIPPED_DOMAINS",
    "TaskProtocol",
    "UserData",
    "check_domain",
    "free_text_answer",
    "generic_task",
    "load_reward",
    "normalize_answer",
    "prepare_task",
    "stamp_domain",
]
