"""kit.machine.scaling: how one step's memory divides across GPUs under DDP and FSDP."""
import dataclasses

import pytest

from kit import arch as A
from kit.machine import memory as M, scaling as S

SIZES = ("llama-2-7b", "llama-2-13b", "llama-2-70b")


@pytest.mark.parametrize("method", list(A.METHOD_NAMES))
@pytest.mark.parametrize("gpus", [1, 2, 8])
def test_ddp_per_gpu_is_the_single_gpu_estimate(method, gpus):
    est = M.estimate("llama-2-7b", **A.METHODS[method].gpu_estimate, batch_size=2, seq_len=256)
    share = S.per_gpu(est, gpus, "ddp")
    assert share["total"] == est.total
    for part in S.SHARDED + S.PER_BATCH:
        assert share[part] == getattr(est, part)
    assert share["gathered_layer"] == share["bucket_copy"] == 0


@pytest.mark.parametrize("method", list(A.METHOD_NAMES))
def test_fsdp_on_one_gpu_is_the_single_gpu_estimate(method):
    est = M.estimate("llama-2-13b", **A.METHODS[method].gpu_estimate)
    assert S.per_gpu(est, 1, "fsdp")["total"] == est.total


@pytest.mark.parametrize("method", list(A.METHOD_NAMES))
@pytest.mark.parametrize("gpus", [2, 3, 8])
def test_fsdp_shards_sum_back_to_the_whole_and_the_batch_parts_do_not_divide(method, gpus):
    est = M.estimate("llama-2-70b", **A.METHODS[method].gpu_estimate)
    share = S.per_gpu(est, gpus, "fsdp")
    for part in S.SHARDED:
        whole = getattr(est, part)
        assert whole <= gpus * share[part] < whole + gpus   # equal shards, padded to divide evenly
    for part in S.PER_BATCH:
        assert share[part] == getattr(est, part)
    assert share["total"] == sum(share[p] for p in S.PARTS)


def test_the_gathered_layer_is_one_decoder_layer():
    arch = A.ARCHS["llama-2-7b"]
    layer_params = sum(i * o * c for i, o, c in A.linear_shapes(arch).values()) + 2 * arch.hidden_size
    full = S.layer_share(M.estimate(arch, **A.METHODS["full"].gpu_estimate))
    assert full["weights"] == full["gradients"] == 4 * layer_params       # fp32 master weights, grads
    lora = S.layer_share(M.estimate(arch, **A.METHODS["lora"].gpu_estimate))
    assert 2 * layer_params < lora["weights"] < 2.1 * layer_params        # 16-bit base + adapters
    assert 0 < lora["gradients"] < 0.01 * full["gradients"]               # adapters only
    qlora = S.layer_share(M.estimate(arch, **A.METHODS["qlora"].gpu_estimate))
    assert qlora["weights"] < lora["weights"] / 3 and qlora["quant_constants"] > 0
    est = M.estimate(arch, **A.METHODS["full"].gpu_estimate)
    assert S.per_gpu(est, 4, "fsdp")["gathered_layer"] == sum(full.values())


@pytest.mark.parametrize("arch", SIZES)
@pytest.mark.parametrize("method", list(A.METHOD_NAMES))
@pytest.mark.parametrize("strategy", S.STRATEGIES)
def test_more_gpus_never_need_more_memory_per_gpu(arch, method, strategy):
    totals = [S.estimate_per_gpu(arch, method, n, strategy)["total"] for n in range(1, 17)]
    assert all(b <= a for a, b in zip(totals, totals[1:]))
    if strategy == "fsdp":
        assert totals[-1] < totals[0] / 2


@pytest.mark.parametrize("method", list(A.METHOD_NAMES))
def test_fsdp_needs_less_than_ddp_from_two_gpus(method):
    for n in (2, 4, 8):
        assert S.estimate_per_gpu("llama-2-70b", method, n, "fsdp")["total"] < \
            S.estimate_per_gpu("llama-2-70b", method, n, "ddp")["total"]


def test_ddp_bucket_copy_adds_the_gradients_once():
    est = M.estimate("llama-2-7b", **A.METHODS["full"].gpu_estimate)
    plain, copied = S.per_gpu(est, 2, "ddp"), S.per_gpu(est, 2, "ddp", bucket_copy=True)
    assert copied["total"] - plain["total"] == est.gradients
    assert S.per_gpu(est, 1, "ddp", bucket_copy=True)["total"] == est.total  # one process: no all-reduce
    assert S.per_gpu(est, 2, "fsdp", bucket_copy=True)["bucket_copy"] == 0


def test_smallest_gpu_count():
    # QLoRA of a 7B model fits one A100 under either strategy; full fine-tuning of a 70B needs many
    assert S.smallest_gpu_count("llama-2-7b", "qlora", "A100-80GB", "ddp") == 1
    n = S.smallest_gpu_count("llama-2-70b", "full", "A100-80GB", "fsdp", max_gpus=64)
    assert n is not None and n > 8
    assert S.estimate_per_gpu("llama-2-70b", "full", n, "fsdp")["total"] <= A.GPUS["A100-80GB"]
    assert S.estimate_per_gpu("llama-2-70b", "full", n - 1, "fsdp")["total"] > A.GPUS["A100-80GB"]
    # DDP never helps a model that does not fit one GPU
    assert S.smallest_gpu_count("llama-2-70b", "full", "A100-80GB", "ddp", max_gpus=64) is None
    assert S.smallest_gpu_count("llama-2-70b", "full", "A100-80GB", "fsdp", max_gpus=8) is None
    # a number of bytes works as the GPU too
    assert S.smallest_gpu_count("llama-2-7b", "lora", 24e9, "fsdp") == 1


def test_table_and_breakdown_are_plain_records():
    rows = S.table(["llama-2-7b"], gpu_counts=(1, 8))
    assert len(rows) == 3 * 2 * 2
    assert {r["method"] for r in rows} == set(A.METHOD_NAMES) and {r["gpus"] for r in rows} == {1, 8}
    assert all(isinstance(r["total"], int) for r in rows)
    parts = S.breakdown("llama-2-13b", 4, "fsdp", seq_len=1024)
    assert list(parts) == list(A.METHOD_NAMES)
    assert parts["full"]["total"] > parts["lora"]["total"] > parts["qlora"]["total"]


def test_a_custom_config_needs_its_arch():
    arch = dataclasses.replace(A.ARCHS["llama-2-7b"], name="my-model")
    est = M.estimate(arch, "lora")
    with pytest.raises(ValueError, match="arch"):
        S.per_gpu(est, 2, "fsdp")
    assert S.per_gpu(est, 2, "fsdp", arch=arch)["total"] < est.total


def test_effective_batch():
    assert S.effective_batch(8, 4, 2) == 64
    with pytest.raises(ValueError, match="processes"):
        S.effective_batch(8, 1, 0)


@pytest.mark.parametrize("call, name", [
    (lambda: S.per_gpu(M.estimate("llama-2-7b"), 0, "ddp"), "gpus"),
    (lambda: S.per_gpu(M.estimate("llama-2-7b"), 2.0, "ddp"), "gpus"),
    (lambda: S.per_gpu(M.estimate("llama-2-7b"), True, "ddp"), "gpus"),
    (lambda: S.per_gpu(M.estimate("llama-2-7b"), 2, "zero3"), "strategy"),
    (lambda: S.per_gpu({"total": 1}, 2, "ddp"), "est"),
    (lambda: S.estimate_per_gpu("llama-2-7b", "qlora-4", 2), "method"),
    (lambda: S.smallest_gpu_count("llama-2-7b", "lora", "RTX-9090"), "gpu"),
    (lambda: S.smallest_gpu_count("llama-2-7b", "lora", -5), "gpu"),
    (lambda: S.smallest_gpu_count("llama-2-7b", "lora", "T4", max_gpus=0), "max_gpus"),
    (lambda: S.breakdown("llama-9-7b", 2), "arch"),
])
def test_bad_input_names_the_parameter(call, name):
    with pytest.raises(ValueError, match=name) as info:
        call()
    assert "got" in str(info.value)
