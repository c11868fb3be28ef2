"""finetune-kit: full fine-tuning, LoRA and QLoRA, measured (see README.md)."""
import warnings

# peft probes `is_gradient_checkpointing`, which transformers 5 deprecates with a FutureWarning on
# every adapter load; it is the libraries' conversation, not the learner's.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
