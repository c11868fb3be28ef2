"""The dtype policy, checked against faked T4, A100, H100 and CPU profiles."""
import pytest
import torch

from kit.machine.device import bnb_error, dtype_policy, make_profile, profile


def test_t4_uses_fp16_with_scaling_and_fp32_trainables():
    t4 = make_profile("cuda", "Tesla T4", (7, 5), 15_835_660_288, bnb_backend="cuda")
    assert t4.compute_dtype == torch.float16
    assert t4.grad_scaling is True
    assert t4.trainable_dtype == torch.float32
    assert t4.bnb_4bit and t4.bnb_8bit
    assert "float16 with gradient scaling" in t4.summary()
    assert "7.5" in t4.summary()


@pytest.mark.parametrize("cap", [(8, 0), (8, 6), (8, 9), (9, 0)])
def test_ampere_and_newer_use_bf16_without_scaling(cap):
    gpu = make_profile("cuda", "A100", cap, 40e9, bnb_backend="cuda")
    assert gpu.compute_dtype == torch.bfloat16
    assert gpu.grad_scaling is False


def test_cpu_uses_fp32():
    cpu = make_profile("cpu", "x86_64", bnb_backend="cpu")
    assert cpu.compute_dtype == torch.float32 and not cpu.grad_scaling
    assert cpu.capability is None and cpu.total_memory is None
    assert "cpu" in cpu.summary()


def test_policy_reads_capability_not_is_bf16_supported():
    # a T4 reports is_bf16_supported() True (emulation); the policy must still say fp16
    assert dtype_policy("cuda", (7, 5)) == (torch.float16, True)
    assert dtype_policy("cuda", (7, 0)) == (torch.float16, True)


def test_bad_device_and_missing_capability():
    with pytest.raises(ValueError, match="device must be one of"):
        dtype_policy("tpu")
    with pytest.raises(ValueError, match="capability is required"):
        dtype_policy("cuda")


def test_bitsandbytes_missing_is_explained():
    no_bnb = make_profile("cpu", bnb_backend="")
    assert not no_bnb.bnb_4bit
    assert "pip install -U bitsandbytes" in bnb_error(no_bnb, 4)
    assert bnb_error(make_profile("cpu", bnb_backend="cpu"), 4) is None


def test_this_machine_profile_is_consistent():
    p = profile()
    assert p.device in ("cpu", "cuda", "mps")
    assert p.compute_dtype == dtype_policy(p.device, p.capability)[0]
    d = p.as_dict()
    assert d["compute_dtype"] in ("float32", "float16", "bfloat16")
    assert d["versions"]["torch"] == torch.__version__


def test_capability_override_parses_and_refuses_clearly():
    from kit.machine.device import capability_override
    assert capability_override("") is None and capability_override("  ") is None
    assert capability_override("7.5") == (7, 5) and capability_override("9.0") == (9, 0)
    for bad in ("t4", "7", "7.5.1", "-1.0"):
        with pytest.raises(ValueError, match="KIT_COMPUTE_CAPABILITY must be a compute capability such as 7.5"):
            capability_override(bad)


def test_profile_follows_the_override_on_cuda(monkeypatch):
    """An H100-like GPU told to follow a T4's policy trains in fp16 with a scaler."""
    import types

    from kit.machine import device as D
    props = types.SimpleNamespace(name="Fake H100", major=9, minor=0, total_memory=80 * 2**30)
    monkeypatch.setattr(D.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(D.torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.delenv("KIT_COMPUTE_CAPABILITY", raising=False)
    own = D.profile()
    assert own.compute_dtype == torch.bfloat16 and not own.grad_scaling and own.name == "Fake H100"
    monkeypatch.setenv("KIT_COMPUTE_CAPABILITY", "7.5")
    t4 = D.profile()
    assert t4.compute_dtype == torch.float16 and t4.grad_scaling and t4.capability == (7, 5)
    assert "compute capability 7.5" in t4.name and t4.total_memory == props.total_memory
