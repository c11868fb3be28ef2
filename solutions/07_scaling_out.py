"""Solutions to notebook 07's exercises: each takes the notebook's variables and returns the
answer the exercise asks for. Try the exercise first; the notebook's check says what is right."""


def ex1(ns):
    # the rebuilt stream says whether the examples are the same; the loss columns whether the
    # losses are identical (to 1e-6)
    diffs = [abs(a["loss"] - b["loss"]) for a, b in zip(ns["one"]["steps"], ns["halves"]["steps"])]
    return ns["same_examples"], max(diffs) < 1e-6


def ex2(ns):
    # the fewest GPUs from kit.machine.scaling, and the largest part that is the same at 2 and 8 GPUs
    S, parts = ns["S"], ns["long_parts"]
    lora_70b = S.smallest_gpu_count("llama-2-70b", "lora", "A100-80GB", "fsdp", max_gpus=64, seq_len=ns["SEQ_LEN"])
    full_8b = S.smallest_gpu_count("llama-3-8b", "full", "A100-80GB", "fsdp", max_gpus=64, seq_len=ns["SEQ_LEN"])
    flat = {k: v for k, v in parts[2]["lora"].items() if k != "total" and v > 0 and v == parts[8]["lora"][k]}
    return lora_70b, full_8b, max(flat, key=flat.get)


def ex3(ns):
    # the second command's summary: where it resumed
    # (none when the Ctrl-C came before a step was done: then it started again from 0)
    return (ns["read"](ns["ex3_dir"] / "summary.json")["resumed_at"] or [0])[0]
