"""Save, load, switch and merge adapters; save full fine-tuning checkpoints.

A LoRA adapter is a few MB of A and B matrices; the base model stays where it is.

    info = save_adapter(model, "runs/dates-lora")        # safetensors, sizes reported
    model = load_adapter(base, "runs/dates-lora")        # base + adapter (a peft model)
    model = load_adapter(model, "runs/extract-lora", adapter_name="extract")
    set_adapter(model, "extract")                        # switch which adapter runs
    with disable_adapter(model):                         # the base model, exactly
        ...
    merged = merge(model, batch).model                   # W + B @ A * scaling: a plain model

Merging a QLoRA adapter: the base is 4-bit, so "merge" means dequantize the base to
fp32 (a fresh model with ordinary Linear layers) and add B @ A * scaling there. We do
NOT re-quantize: rounding the merged weights back to 4 bit would change them (peft's
4-bit merge warns about that), and the adapter learned to correct the 4-bit base.

Everything is written as safetensors (no pickle).

    files  save, load, switch     merge  into the base, and saved     loftq  adapters from what loading lost
"""
from kit.engine.adapters.files import (ADAPTER_FILE, adapter_names, disable_adapter,  # noqa: F401
                                       load_adapter, save_adapter, save_full, set_adapter)
from kit.engine.adapters.loftq import init_loftq  # noqa: F401
from kit.engine.adapters.merge import (MergeResult, dequantize, logits, max_logit_diff, merge,  # noqa: F401
                                       save_merged)
