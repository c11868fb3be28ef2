"""07 · Scaling out, run headless with its smoke parameters (tiny-llama, a few steps);
assertions on what it recorded: the resumed run is continuous and equal to the uninterrupted
one, two processes trained on different data and ended with the same weights, and the per-GPU
table behaves as DDP and FSDP do; the exercises' checks pass with their solutions and fail with
a wrong answer."""

import pytest
from conftest import assert_exercises, recorded_run

pytestmark = [pytest.mark.notebook, pytest.mark.slow]

recorded = recorded_run("07_scaling_out")


def test_a_stopped_command_resumes_into_the_uninterrupted_run(recorded):
    tmp_path, params, res = recorded
    steps = params["STEPS"]
    # 1. the command, stopped half-way and run again: one continuous history, exactly the
    # uninterrupted run's losses (a CPU is deterministic), only safetensors and text files
    resume = res["resume"]
    assert res["resume_continuous"] is True
    assert resume["steps"] == list(range(1, steps + 1))
    assert resume["resumed_at"] == [steps // 2] and resume["first_steps_kept"]
    assert resume["max_loss_diff_vs_uninterrupted"] < 1e-5
    assert res["only_safe_formats"] is True
    assert "adapter/adapter_model.safetensors" in res["run_files"] and "history.json" in res["run_files"]
    assert not [f for f in res["run_files"] if f.endswith((".bin", ".pt", ".pkl"))]
    assert res["recipe"]["model"] == params["MODEL"] and res["recipe"]["max_steps"] == steps


def test_two_processes_see_different_batches_and_end_equal(recorded):
    tmp_path, params, res = recorded
    steps = params["STEPS"]
    # 2. two processes: different batches, identical weights, the one-process stream shared out
    dp = res["data_parallel"]
    assert res["different_data"] is True and res["same_weights"] is True
    assert dp["covers_stream"] is True
    assert len(dp["batch_crc"]["rank0"]) == len(dp["batch_crc"]["rank1"]) == steps
    one, two = dp["speeds"]
    assert (one["processes"], two["processes"]) == (1, 2)
    assert two["examples_per_step"] == 2 * one["examples_per_step"]
    assert one["examples_per_s"] > 0 and two["examples_per_s"] > 0


def test_per_gpu_memory_ddp_flat_fsdp_falling(recorded):
    tmp_path, params, res = recorded
    # 3. per-GPU memory: DDP flat, FSDP falling, below DDP from 2 GPUs (JSON keys are strings)
    gb = res["per_gpu_gb"]
    assert set(gb) == {"llama-2-7b", "llama-2-13b", "llama-2-70b"}
    for arch, methods in gb.items():
        assert methods["full"]["ddp"]["1"] > methods["lora"]["ddp"]["1"] > methods["qlora"]["ddp"]["1"]
        for method, by in methods.items():
            assert len(set(by["ddp"].values())) == 1, (arch, method)          # replicas: same at any N
            fsdp = [by["fsdp"][n] for n in ("1", "2", "4", "8")]
            assert fsdp[0] == pytest.approx(by["ddp"]["1"])
            assert all(b < a for a, b in zip(fsdp, fsdp[1:])), (arch, method)
        assert methods["full"]["fsdp"]["8"] < methods["full"]["ddp"]["8"]
    fewest = res["fewest_gpus_fsdp"]
    assert fewest["llama-2-70b"]["full"]["A100-80GB"] > 8                     # a 70B full run is multi-node
    assert fewest["llama-2-7b"]["qlora"]["T4"] == 1
    widget = res["widget"]
    assert (widget["model"], widget["gpus"], widget["strategy"]) == ("llama-2-70b", 8, "fsdp")
    assert widget["per_gpu_gb"]["full"]["total"] == pytest.approx(gb["llama-2-70b"]["full"]["fsdp"]["8"])
    assert widget["per_gpu_gb"]["qlora"]["gathered_layer"] > 0
    assert res["ddp_bucket_copy_7b_full_2gpus_gb"] > gb["llama-2-7b"]["full"]["ddp"]["2"]


def test_fsdp_divides_the_4_bit_base_ddp_does_not(recorded):
    tmp_path, params, res = recorded
    # 4. QLoRA across GPUs: FSDP divides the 4-bit base, DDP does not
    q = res["qlora_70b_gb"]
    assert q["ddp x2"] == pytest.approx(q["ddp x1"]) and q["fsdp x2"] < q["ddp x2"] / 1.5
    assert res["qlora_70b_fewest_24gb"] == 2


def test_the_gpu_check_ledger_equals_the_estimate_on_a_cpu(recorded):
    tmp_path, params, res = recorded
    # 5. the GPU check ran on the CPU: the ledger and the estimate agree, no CUDA peak
    check = {r["method"]: r for r in res["gpu_check"]}
    assert "lora" in check
    for r in check.values():
        assert r["device"] == "cpu" and r["cuda_peak_mb"] is None
        assert r["ratio"] == pytest.approx(1, rel=0.05)


def test_its_figures_and_timings(recorded):
    tmp_path, params, res = recorded
    for fig in ("07_resume", "07_data_parallel", "07_per_gpu_by_count", "07_per_gpu"):
        assert (tmp_path / "figures" / f"{fig}.png").stat().st_size > 5_000
    assert res["hardware"] and set(res["seconds"]) >= {"first_half", "second_half", "one_process",
                                                       "two_processes", "gpu_check", "notebook", "ex1", "ex3"}


def test_the_exercises_check_both_ways(recorded):
    tmp_path, params, res = recorded
    # exercises: half the batch on two processes = the one-process examples, but not its losses;
    # the Ctrl-C checkpointed the finished steps and the same command resumed there
    ex = {int(k): v["facts"] for k, v in res["exercises"].items()}
    resume, fewest = res["resume"], res["fewest_gpus_fsdp"]
    assert ex[1]["stream_rebuilt"] is True and ex[1]["same_examples"] is True
    assert ex[1]["identical"] is False and 0 < ex[1]["max_loss_diff"] < 0.5 * resume["losses"][0]
    assert (ex[2]["fewest_lora_70b"], ex[2]["fewest_full_8b"]) == (fewest["llama-2-70b"]["lora"]["A100-80GB"], 2)
    assert set(ex[2]["largest_flat"].values()) == {"activations"}
    assert ex[3]["exit_code"] == 130 and ex[3]["interrupted_at"] >= 1
    assert ex[3]["resumed_at"] == ex[3]["interrupted_at"] and ex[3]["steps_done"] == ex[3]["interrupted_at"] + 2
    assert_exercises(res, wrong={1: (True, True), 2: (1, 1, "weights"), 3: 0})
