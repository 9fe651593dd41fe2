"""Train an SVF expert with TRL's GRPOTrainer on examples/capitals.jsonl (docs/trl.md).

python examples/trl_capitals.py            # from the repository root; needs trl
"""

import json
from pathlib import Path

from capitals_reward import reward  # reward(completions, answer, **columns) -> list[float]
from datasets import Dataset

import transformer_squared as t2
from transformer_squared.trl_grpo import GRPOConfig, SVFGRPOTrainer

model, tokenizer = t2.load_model("default")
svf = t2.SVFModel(model, targets="mlp")  # the z vectors are the only trainable parameters
rows = [json.loads(line) for line in open(Path(__file__).with_name("capitals.jsonl"), encoding="utf-8")]
data = Dataset.from_list(
    [{"prompt": [{"role": "user", "content": r["question"]}], "answer": r["answer"]} for r in rows]
)
args = GRPOConfig(
    output_dir="runs/trl-capitals",
    per_device_train_batch_size=8,
    num_generations=4,
    max_completion_length=16,
    max_steps=4,
    learning_rate=2e-3,
    beta=0.1,
    logging_steps=1,
    report_to="none",
    save_strategy="no",
    use_cpu=True,
)
trainer = SVFGRPOTrainer(svf, reward_funcs=reward, args=args, train_dataset=data, processing_class=tokenizer)
trainer.train()
print(trainer.save_expert("runs/trl-capitals/expert", task="capitals", domain="geography"))
