"""Solutions to notebook 05's exercises: each takes the notebook's variables and returns the
answer the exercise asks for. Try the exercise first; the notebook's check says what is right."""


def ex1(ns):
    # the base whose run had the lower validation loss after ex_steps steps
    if "ex_at" not in ns:
        return None
    steps = ns["ex_steps"]
    losses = {ns["QUANT"]: ns["main_at"][steps], ns["other"]: ns["ex_at"][steps]}
    return min(losses, key=losses.get)


def ex2(ns):
    # fp32 gradients + Adam's two moments at the larger rank, over the 4-bit base's weight memory
    if "ex_ledger" not in ns:
        return None
    led = ns["ex_ledger"]
    return (led.gradients + led.optimizer) / 1e6 / ns["base_weight_mb"]


def ex3(ns):
    # CUDA: the paged 8-bit AdamW; compute capability 7.5: fp16 (with gradient scaling), not bf16
    t4 = ns["t4"]
    return ns["pick_optimizer"]("auto", t4), t4.dtype_name


def ex4(ns):
    # whether the forced repacking left a gradient at the probe layer's input
    if "ex4" not in ns or ns["ex4"].repacking is None:
        return None
    return ns["ex4"].repacking.gradient_reached
