"""Fine-tune a causal language model: full fine-tuning, LoRA or QLoRA, one loop (loop.finetune).

    config   the settings (TrainConfig) and what a run records (History)
    prepare  which parameters train: where the three methods differ
    optim    the learning-rate schedule, the optimizer, the precision
    run      setting up a run: data, checks, processes, checkpoints, early stopping
    loop     the loop itself, read top to bottom
"""
from kit.engine.train.config import (RESUMABLE, SCHEDULES, FinetuneResult, History, TrainConfig,  # noqa: F401
                                     check_config, check_value, knob, with_overrides)
from kit.engine.train.loop import PARITY_TOLERANCE, answer_loss, finetune  # noqa: F401
from kit.engine.train.optim import (lr_at, make_optimizer, optimizer_class, peak_memory,  # noqa: F401
                                    precision)
from kit.engine.train.prepare import is_4bit, linear_names, prepare_model  # noqa: F401
from kit.engine.train.run import (Checkpoints, Processes, Run, best_evaluation, check_fits,  # noqa: F401
                                  start_run, tokenized_splits)
