"""Solutions to notebook 06's exercises: each takes the notebook's variables and returns the
answer the exercise asks for. Try the exercise first; the notebook's check says what is right."""


def ex1(ns):
    # the columns where "within 15% of the seed" flips between the two settings, and whether any
    # method's largest preset changes
    here, there = ns["seed_rows"], ns["seed_table"](ns["try_rank"], ns["try_gpu"])
    columns = sorted({b["method"] for a, b in zip(here, there) if a["holds"] != b["holds"]},
                     key=ns["SEED_COLUMNS"].index)
    before = {m: v["name"] for m, v in ns["largest"].items()}
    after = {m: v["name"] for m, v in ns["largest_presets"](ns["try_rank"], ns["try_gpu"]).items()}
    return columns, before != after


def ex2(ns):
    # the longest seq_len whose estimate fits the T4, with and without gradient checkpointing
    return ns["longest_fit"](True), ns["longest_fit"](False)


def ex3(ns):
    # QLoRA's median time per step over LoRA's, from the overview rows
    return ns["by"]["qlora"]["step_time_s"] / ns["by"]["lora"]["step_time_s"]
