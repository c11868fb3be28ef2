"""Solutions to notebook 09's exercises (each takes the notebook's variables)."""


def ex1(ns):
    return [f.name for f in ns["dg"].check_labels([ns["row"]], ns["tok"])][0]


def ex2(ns):
    return ns["eight_by_one"] > ns["accumulation"]["mean of micro-batch means"]


def ex3(ns):
    M = ns["M"]
    fit = [n for n in ns["lengths"]
           if M.fits(M.estimate("llama-2-7b", "qlora", bits=4, r=8, batch_size=1, seq_len=n,
                                gradient_checkpointing=False), ns["GPU"])]
    return max(fit, default=0)
