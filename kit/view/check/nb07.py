"""The checks of notebook 07 (scaling out): ex07_N(answer, **facts) -> bool, printing the verdict."""
from __future__ import annotations

from kit.view.check.common import as_pair, is_number, verdict


def ex07_1(answer, same_examples=None, stream_rebuilt=None, identical=None, max_loss_diff=None,
           first_step_diff=None, max_rel_diff=None, lora_dropout=None, batches=None) -> bool:
    if same_examples is None:
        return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)
    got = as_pair(answer)
    ok = got is not None and got[0] is same_examples and got[1] is identical
    if identical:
        why = (f"the losses agree to {max_loss_diff:.1e}: with no dropout and answers of equal length, the mean of "
               "the two processes' token means is the token mean of the whole batch.")
    else:
        why = (f"the losses differ by up to {max_loss_diff:.1e} ({max_rel_diff:.2%} of the loss), "
               f"{first_step_diff:.1e} already at step 1, where the weights are still the same: each process "
               "averages the loss over its own answer tokens and the two means are then averaged, which weighs "
               "a token of the batch with fewer answer tokens a little more than one process's mean over all of "
               f"them; and each process draws its own dropout masks (lora_dropout {lora_dropout}). Afterwards "
               "the weights differ slightly too, so the gap can grow.")
    same = ("the same examples every step: rank 0 takes batch 2i of the one stream, rank 1 batch 2i + 1, and "
            "together they are the one-process batch i; "
            if same_examples else "not the same examples (an odd BATCH cannot be halved); ")
    return verdict(ok, same + why,
                   "read the cell's two checks: does each step's rebuilt one-process batch equal rank 0's plus "
                   "rank 1's examples, and are the two loss columns equal to the last digit (not just close)? "
                   "Answer two True/False values.", answer)


def ex07_2(answer, fewest_lora_70b=None, fewest_full_8b=None, seq_len=None, model=None, flat_gb=None,
           largest_flat=None) -> bool:
    if largest_flat is None:
        return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)
    got = as_pair(answer, 3)
    part = str(got[2]).lower().strip().replace(" ", "_") if got else ""
    ok = (got is not None and is_number(got[0]) and is_number(got[1]) and got[0] == fewest_lora_70b
          and got[1] == fewest_full_8b and part.rstrip("s") in {p.rstrip("s") for p in largest_flat.values()})
    stays = ", ".join(f"{m} {largest_flat[m]} {flat_gb[m][largest_flat[m]]:.1f} GB" for m in largest_flat)
    return verdict(ok,
                   f"{fewest_lora_70b} A100-80GB for LoRA of llama-2-70b, {fewest_full_8b} for full fine-tuning of "
                   f"llama-3-8b (16 bytes per parameter for its weights, gradients and Adam states: more than one card holds). "
                   f"At {seq_len} tokens the activations stay put ({model}, per GPU: {stays}): FSDP shards "
                   "weights, gradients and optimizer states, but every GPU still runs its own batch through every "
                   "layer. Next: a shorter sequence or a smaller batch per GPU, or sharding the sequence itself "
                   "(sequence / context parallelism); more GPUs alone no longer help.",
                   "raise gpus under fsdp until the bar drops below the A100-80GB line, for each model and method "
                   "(or call S.smallest_gpu_count); for the part, compare the 2-GPU and 8-GPU bars at 4096 tokens: "
                   "which slice keeps its size? Answer e.g. (3, 4, \"weights\").", answer)


def ex07_3(answer, interrupted_at=None, resumed_at=None, exit_code=None, steps_done=None, save_steps=0) -> bool:
    if interrupted_at is None:
        return verdict(False, "", "run the exercise's variation first (EXERCISES = True).", answer)
    if interrupted_at == 0:
        return verdict(False, "", "the Ctrl-C came before the first step finished, so there was nothing to "
                       "keep: raise ex3_seconds and run the cell again.", answer)
    ok = is_number(answer) and answer == resumed_at
    return verdict(ok,
                   f"it resumed from step {resumed_at}, where the Ctrl-C stopped it ({interrupted_at} steps done, "
                   f"exit code {exit_code}): nothing was lost although save_steps is {save_steps}, because the "
                   "interrupt itself checkpoints. The training loop catches the KeyboardInterrupt, saves the "
                   "finished steps (trainable weights, optimizer state, random generators, the position in the "
                   "data stream, the history) and lets it through. save_steps is for what cannot be caught: a "
                   "killed kernel, a Colab session that ends, a power cut.",
                   "read the second command's last lines ('resumed at N') or resumed_at in its summary.json.",
                   answer)
