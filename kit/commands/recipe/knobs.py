"""Every knob of a recipe: the run's (model, data, run folder: RunKnobs) and the training's
(kit.engine.train.TrainConfig), each with its meaning, type, default and choices, written once.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from kit.arch import METHOD_NAMES, MODELS
from kit.engine.data import TASKS
from kit.engine.train import TrainConfig, knob


@dataclass
class RunKnobs:
    # ---- what to train
    model: str = knob("smollm2-135m", f"a preset ({', '.join(MODELS)}; smollm2-135m is bundled "
                      "offline), a hub id or a local folder. Start with the smallest model that can "
                      "plausibly do the task.")
    method: str = knob("lora", "full: every weight trains (16 bytes per parameter with AdamW); lora: "
                       "small adapters on a frozen base; qlora: the same adapters on a 4-bit base. "
                       "LoRA first; QLoRA when the 16-bit base does not fit; full when adapters "
                       "plateau and memory allows.", METHOD_NAMES)
    quantization: str = knob("auto", "how the frozen base is stored: auto (nf4 for qlora, none "
                             "otherwise), none, nf4 (the QLoRA paper's 4-bit type) or fp4. Only the "
                             "base is quantized; the adapters always train in 16/32 bit.",
                             ("auto", "none", "nf4", "fp4"))
    double_quant: bool = knob(True, "4-bit only: quantize the per-block scales too, 4.5 -> about 4.13 "
                              "bits per weight at no measurable cost. Leave it on.")
    device: str = knob("auto", "auto uses a CUDA GPU when there is one; cuda refuses to start without "
                       "one (GPU recipes set it, so a 7B run does not crawl on a CPU); cpu forces the "
                       "CPU.", ("auto", "cpu", "cuda"), may_change=True)
    # ---- data
    task: str = knob("dates", "a task the kit generates: dates (normalise dates to ISO 8601, learned "
                     "in minutes) or extract (fields of a sentence as JSON, harder). Ignored when "
                     "data_file or hub_dataset is set.", TASKS)
    data_file: str | None = knob(None, "your own examples: a .jsonl, .json, .csv or .tsv file of "
                                 "conversations (a messages column), Alpaca records (instruction, "
                                 "input, output) or prompt/response columns (kit.engine.formats), split "
                                 "80/10/10 into train/validation/test. A few hundred good examples "
                                 "beat thousands of noisy ones.")
    hub_dataset: str | None = knob(None, "a Hugging Face dataset id (needs the network); columns as "
                                   "for data_file.")
    prompt_column: str = knob("prompt", "the column holding the prompt (data_file, hub_dataset).")
    response_column: str = knob("response", "the column holding the answer to learn; the loss is on "
                                "these tokens only.")
    n_train: int = knob(400, "training examples generated for task (data_file and hub_dataset are "
                        "used whole). Exact-answer tasks need hundreds, not thousands.", low=1)
    n_val: int = knob(50, "validation examples generated for task: the loss on them, every "
                      "eval_steps, shows overfitting.", low=0)
    skip_bad_rows: bool = knob(False, "a row of data_file or hub_dataset that cannot be used (an empty "
                               "prompt or response, a malformed conversation) stops the run with its "
                               "file and line; true skips such rows, prints how many and records it "
                               "(skipped_rows in summary.json). Fix the rows if you can.")
    # ---- run folder and evaluation
    output_dir: str | None = knob(None, "where the adapter or model, checkpoints, history and summary "
                                  "go; null = runs/finetune/<recipe name>.", may_change=True)
    resume: bool = knob(True, "carry on from the newest checkpoint in output_dir (the same command "
                        "again resumes); false deletes them and starts over.", may_change=True)
    eval_examples: int = knob(50, "test examples scored (exact match) before and after training; 0 = "
                              "skip. Generation is the slow part of evaluation.", low=0, may_change=True)


# Every knob: its field (default, type, help, choices, lower bound). Training knobs are TrainConfig's.
KNOBS: dict[str, dataclasses.Field] = {f.name: f for dc in (RunKnobs, TrainConfig)
                                       for f in dataclasses.fields(dc)}


# the knobs a resumed run may set otherwise than its checkpoint (kit.engine.checkpoint checks the rest)
MAY_CHANGE = frozenset(name for name, spec in KNOBS.items() if spec.metadata["may_change"])


SECTIONS = {  # how a recipe file is laid out
    "What to train": ["model", "method", "quantization", "double_quant", "device"],
    "Data": ["task", "data_file", "hub_dataset", "prompt_column", "response_column", "n_train",
             "n_val", "skip_bad_rows", "max_length"],
    "Training": ["max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
                 "learning_rate", "warmup_steps", "lr_scheduler_type", "weight_decay", "max_grad_norm",
                 "gradient_checkpointing", "answer_logits_only", "optim", "train_sampling_strategy", "eval_steps",
                 "early_stopping_patience", "early_stopping_threshold", "seed", "disable_tqdm"],
    "LoRA adapters (method lora or qlora)": ["lora_r", "lora_alpha", "lora_dropout",
                                             "lora_target_modules", "use_rslora", "use_dora",
                                             "loraplus_lr_ratio"],
    "Run folder, checkpoints, evaluation": ["output_dir", "save_steps", "save_total_limit", "resume",
                                            "stop_after", "eval_examples"],
}
