"""What machine are we on, and which number formats should training use here?

The dtype policy (one place for the whole kit):

| machine                              | compute dtype | gradient scaling | trainable params |
|--------------------------------------|---------------|------------------|------------------|
| CUDA, compute capability >= 8.0      | bf16          | no               | fp32 (adapters)  |
| CUDA, compute capability <  8.0 (T4) | fp16          | yes              | fp32             |
| Apple MPS                            | fp32          | no               | fp32             |
| CPU                                  | fp32          | no               | fp32             |

Why: bf16 has fp32's exponent range, so its gradients do not underflow and need no
scaler; only Ampere (8.0) and newer GPUs compute it natively. A T4 (7.5) reports
`torch.cuda.is_bf16_supported() == True` because it can emulate bf16, slowly, so the
policy reads the compute capability instead. On a CPU without native bf16 a LoRA step
took 60 s in bf16 against 2.5 s in fp32 (measured on the 2-core CI machine), so CPUs
compute in fp32.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class DeviceProfile:
    device: str                     # "cuda", "mps" or "cpu"
    name: str                       # GPU name, or the CPU's architecture
    capability: tuple[int, int] | None  # CUDA compute capability, e.g. (7, 5) for a T4
    total_memory: int | None        # bytes of accelerator memory (None on CPU)
    compute_dtype: torch.dtype      # dtype of the frozen weights' matmuls
    grad_scaling: bool              # fp16 needs a gradient scaler to avoid underflow
    trainable_dtype: torch.dtype    # dtype of the parameters the optimizer updates
    bnb_4bit: bool                  # can bitsandbytes quantize to 4 bit here?
    bnb_8bit: bool                  # ... and to 8 bit?
    bnb_backend: str = ""           # what bitsandbytes runs on ("cuda", "cpu", "" if absent)
    versions: dict = field(default_factory=dict, compare=False)

    @property
    def dtype_name(self) -> str:
        return str(self.compute_dtype).replace("torch.", "")

    def summary(self) -> str:
        """A few lines a learner can read at a glance."""
        mem = f"{self.total_memory / 1e9:.1f} GB" if self.total_memory else "system RAM"
        cap = f", compute capability {self.capability[0]}.{self.capability[1]}" if self.capability else ""
        lines = [
            f"device      : {self.device} ({self.name}{cap}, {mem})",
            f"compute     : {self.dtype_name}" + (" with gradient scaling" if self.grad_scaling else ""),
            f"trainable   : {str(self.trainable_dtype).replace('torch.', '')}",
            f"bitsandbytes: 4-bit {'yes' if self.bnb_4bit else 'no'}, 8-bit {'yes' if self.bnb_8bit else 'no'}"
            + (f" (backend: {self.bnb_backend})" if self.bnb_backend else ""),
        ]
        if self.versions:
            lines.append("versions    : " + ", ".join(f"{k} {v}" for k, v in self.versions.items()))
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "device": self.device, "name": self.name,
            "capability": list(self.capability) if self.capability else None,
            "total_memory": self.total_memory, "compute_dtype": self.dtype_name,
            "grad_scaling": self.grad_scaling,
            "trainable_dtype": str(self.trainable_dtype).replace("torch.", ""),
            "bnb_4bit": self.bnb_4bit, "bnb_8bit": self.bnb_8bit, "bnb_backend": self.bnb_backend,
            "versions": dict(self.versions),
        }


def dtype_policy(device: str, capability: tuple[int, int] | None = None) -> tuple[torch.dtype, bool]:
    """(compute dtype, needs gradient scaling) for a device and CUDA compute capability."""
    if device == "cuda":
        if capability is None:
            raise ValueError("capability is required for device='cuda', e.g. (7, 5) for a T4.")
        if tuple(capability) >= (8, 0):
            return torch.bfloat16, False
        return torch.float16, True
    if device in ("cpu", "mps"):
        return torch.float32, False
    raise ValueError(f"device must be one of 'cuda', 'mps', 'cpu'; got {device!r}.")


def make_profile(device: str, name: str = "", capability: tuple[int, int] | None = None,
                 total_memory: int | None = None, bnb_backend: str | None = None,
                 versions: dict | None = None) -> DeviceProfile:
    """Build a profile from plain facts (what `profile()` reads; tests pass fakes)."""
    compute_dtype, scaling = dtype_policy(device, capability)
    if bnb_backend is None:
        bnb_backend = _bnb_backend(device)
    # bitsandbytes >= 0.46 quantizes on CPU too; on CUDA it works from compute capability 5.0.
    usable = bnb_backend in ("cuda", "cpu") and device != "mps"
    return DeviceProfile(device=device, name=name or device, capability=capability,
                         total_memory=total_memory, compute_dtype=compute_dtype,
                         grad_scaling=scaling, trainable_dtype=torch.float32,
                         bnb_4bit=usable, bnb_8bit=usable, bnb_backend=bnb_backend,
                         versions=versions or {})


POLICY_VARIABLE = "KIT_COMPUTE_CAPABILITY"


def capability_override(value: str | None = None) -> tuple[int, int] | None:
    """The compute capability set in $KIT_COMPUTE_CAPABILITY ("7.5"), or None if unset.

    With it, a newer GPU follows an older GPU's dtype policy: "7.5" on an A100 or H100
    trains in fp16 with a gradient scaler, as a T4 would. Memory and numerics follow the
    policy; speed stays the newer GPU's."""
    text = os.environ.get(POLICY_VARIABLE, "") if value is None else value
    if not text.strip():
        return None
    try:
        major, minor = (int(part) for part in text.strip().split("."))
        if major < 1 or minor < 0:
            raise ValueError
    except ValueError:
        raise ValueError(f"{POLICY_VARIABLE} must be a compute capability such as 7.5 (a T4's: fp16 "
                         f"with a gradient scaler) or 8.0 (bf16); got {text!r}. Unset it to use the "
                         f"GPU's own.") from None
    return major, minor


def profile() -> DeviceProfile:
    """Read this machine (on CUDA, $KIT_COMPUTE_CAPABILITY can set the dtype policy)."""
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        name, capability = props.name, (props.major, props.minor)
        override = capability_override()
        if override is not None and override != capability:
            name = f"{props.name} (dtype policy of compute capability {override[0]}.{override[1]}, {POLICY_VARIABLE})"
            capability = override
        return make_profile("cuda", name, capability, props.total_memory, versions=library_versions())
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return make_profile("mps", "Apple GPU", versions=library_versions())
    return make_profile("cpu", platform.machine() or "cpu", versions=library_versions())


def hardware() -> str:
    """One line naming the machine, for every reported number (notebooks, the study)."""
    p = profile()
    if p.device == "cuda":
        return f"{p.name} (CUDA {p.capability[0]}.{p.capability[1]}, {p.total_memory / 1e9:.0f} GB)"
    return f"CPU {platform.machine()} x{os.cpu_count()} cores, {p.dtype_name}"


def library_versions() -> dict:
    out = {}
    for pkg in ("torch", "transformers", "peft", "bitsandbytes", "datasets", "accelerate"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "missing"
    return out


def _bnb_backend(device: str) -> str:
    try:
        version = importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        return ""
    if device == "cuda":
        return "cuda"
    major, minor = (int(p) for p in version.split(".")[:2])
    return "cpu" if (major, minor) >= (0, 46) else ""


def bnb_error(profile_: DeviceProfile, bits: int = 4) -> str | None:
    """A message saying why `bits`-bit bitsandbytes cannot run here, or None if it can."""
    ok = profile_.bnb_4bit if bits == 4 else profile_.bnb_8bit
    if ok:
        return None
    if not profile_.bnb_backend:
        return (f"{bits}-bit quantization needs bitsandbytes >= 0.46 (CPU) or a CUDA GPU; "
                f"install it with `pip install -U bitsandbytes`, or use quantization=None.")
    return (f"{bits}-bit bitsandbytes is not usable on device {profile_.device!r}; "
            "use a CUDA GPU or the CPU, or use quantization=None.")
