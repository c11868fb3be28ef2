"""The checks of notebook 08 (your own data): ex08_N(answer, **facts) -> bool, printing the verdict."""
from __future__ import annotations

from kit.engine.train import PARITY_TOLERANCE
from kit.view.check.common import close, verdict


def ex08_1(answer, loss_tokens: int, assistant_turns: int) -> bool:
    return verdict(close(answer, loss_tokens, abs_tol=0.5),
                   f"{loss_tokens} tokens: the assistant turns' text plus one end-of-turn token for each of "
                   f"the {assistant_turns} answers; the system and user turns and the role headers carry none.",
                   "count only the tokens in [[...]]: each answer's text and its end-of-turn token.", answer)


def ex08_2(answer, random: float, grouped: float) -> bool:
    halved = "at least halves it" if grouped <= random / 2 else "cuts it, though by less than half"
    return verdict(close(answer, random, abs_tol=0.03),
                   f"about {random:.0%} of a random batch was padding; grouping by length {halved} "
                   f"({grouped:.0%}).", "read the 'random' line of section 2 (a share between 0 and 1).",
                   answer)


def ex08_3(answer, max_rel_diff: float) -> bool:
    same = max_rel_diff < PARITY_TOLERANCE
    return verdict(answer is not None and bool(answer) == same,
                   f"{'the same' if same else 'not the same'} losses (largest relative difference "
                   f"{max_rel_diff:.1e}): the same batches, seed, schedule and optimizer make the same "
                   "computation. A warm-up on one side changes the first step's learning rate (0 in "
                   "transformers' schedule), so every loss after the first differs.",
                   "compare the two lists of losses section 3 printed.", answer)
