"""`python -m kit diagnose`: find the usual reasons a fine-tune goes wrong, in seconds.

    python -m kit diagnose --config cpu-lora [--knob value ...]   # before training: a recipe + its data
    python -m kit diagnose --run runs/finetune/cpu-lora            # after: a finished run folder
    kit.commands.diagnose.diagnose_recipe(recipe) / diagnose_run(folder)    # the same from a notebook

Each check prints what it found and the fix. Before training (a recipe):
  labels    which tokens train (one example drawn with the trained tokens in [brackets]); no token
            trained; the end of turn not trained (the model never learns to stop); pad == end of
            turn, which a collator that masks labels by the pad id turns into that fault;
  adapters  no trainable parameter; a target module with no adapter; fp16 trainable parameters under
            a gradient scaler (transformers#23165); after one backward pass, a
            trainable parameter with no gradient (gradient checkpointing without input gradients),
            lora_B with a zero gradient; the gradient norm of each group of layers;
  memory    the largest parts of one step (kit.machine.memory.estimate) and the sequence length at which
            the chosen GPU runs out.
After training (a run folder): the same labels are not re-read; the training curve (flat, spiking,
validation turning up, with the step) and the adapter file (lora_B still all zero).

    findings  Finding, Report, the history and memory checks    labels  which tokens train
    adapters  the adapters and their gradients                  command the entry points
"""
from kit.commands.diagnose.adapters import (check_adapter_weights, check_adapters,  # noqa: F401
                                            check_gradients, check_trainable_dtypes, group_of)
from kit.commands.diagnose.command import diagnose_recipe, diagnose_run, main  # noqa: F401
from kit.commands.diagnose.findings import (FLAT, SPIKE, TURNED_UP, Finding, Report,  # noqa: F401
                                            check_history, check_memory)
from kit.commands.diagnose.labels import check_labels, label_view  # noqa: F401
