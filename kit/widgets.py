"""Widgets (ipywidgets) that redraw a plot or table when a knob moves.

Each builder takes a plain draw function (usually from kit.plots) that the notebook also
calls once with its parameter values, so a headless run exercises the same computation.
Every control has a `description` (e.g. "rank", "targets") a browser test can find.
"""
from __future__ import annotations


# ============================================================================ 01-03: full FT and LoRA
def show_figure(obj) -> None:
    """Display what a draw function returned (a matplotlib Figure is shown, then closed)."""
    from IPython.display import display

    if hasattr(obj, "savefig"):
        import matplotlib.pyplot as plt
        display(obj)
        plt.close(obj)
    elif obj is not None:
        display(obj)


def rank_explorer(draw, value: int = 8, min: int = 1, max: int = 64, description: str = "rank"):
    """An IntSlider (`description`, default "rank") that redraws `draw(r)` below itself.
    `draw` is a plain function of the rank returning a Figure (or anything displayable)."""
    import ipywidgets as widgets

    slider = widgets.IntSlider(value=value, min=min, max=max, step=1, description=description,
                               continuous_update=False)
    out = widgets.interactive_output(lambda r: show_figure(draw(r)), {"r": slider})
    return widgets.VBox([slider, out])


def choice_explorer(draw, options, value=None, description: str = "targets"):
    """A Dropdown (`description`, default "targets") that redraws `draw(choice)` below itself."""
    import ipywidgets as widgets

    options = list(options)
    dropdown = widgets.Dropdown(options=options, value=options[0] if value is None else value,
                                description=description)
    out = widgets.interactive_output(lambda choice: show_figure(draw(choice)), {"choice": dropdown})
    return widgets.VBox([dropdown, out])


# ============================================================================ 04-06: quantization, QLoRA, choosing
# The computations behind the widgets of 04 and 06 are the plain functions bits_view and
# memory_calculator; the notebooks call them once with their parameters, then give them knobs.

def bits_view(w, bits: int, blocksize: int = 64, linear_params: int | None = None,
              other_params: int = 0, layer: str = "") -> dict:
    """Quantize one weight `w` to `bits` bits (symmetric absmax, blockwise, kit.quant kind "int")
    and report the error and what the whole model's weights would take.

    linear_params: parameters of the model's Linear layers (what gets quantized; default w's size)
    other_params:  the rest (embeddings, norms), kept in 16 bit
    -> {"bits", "blocksize", "layer", "mse", "sqnr_db", "bits_per_param", "error" (a sample of
        w_hat - w), "error_range" (the 2-bit maximum, so the x axis stays put), "params",
        "memory_mb" {"fp32", "bf16", "int<bits>"}}"""
    import torch
    from kit.quant import error_report, quantize

    qt = quantize(w, "int", bits=bits, blocksize=blocksize)
    report = error_report(w, qt)
    err = (qt.dequantize().float() - w.float()).flatten()          # (n,)
    if err.numel() > 200_000:                                      # a fixed sample is enough to draw
        err = err[torch.randperm(err.numel(), generator=torch.Generator().manual_seed(0))[:200_000]]
    widest = quantize(w, "int", bits=2, blocksize=blocksize)
    linear = w.numel() if linear_params is None else linear_params
    params = linear + other_params
    return {"bits": bits, "blocksize": blocksize, "layer": layer, "mse": report["mse"],
            "sqnr_db": report["sqnr_db"], "bits_per_param": report["bits_per_param"],
            "error": err.tolist(), "error_range": float((widest.dequantize().float() - w.float()).abs().max()),
            "params": params,
            "memory_mb": {"fp32": params * 4 / 1e6, "bf16": params * 2 / 1e6,
                          f"int{bits}": (linear * report["bits_per_param"] / 8 + other_params * 2) / 1e6}}


def show_bits(w, bits: int, blocksize: int = 64, linear_params: int | None = None,
              other_params: int = 0, layer: str = "", title: str = ""):
    """bits_view drawn by kit.plots.bits_figure (what the "bits" slider redraws)."""
    from kit.plots import bits_figure

    return bits_figure(bits_view(w, bits, blocksize, linear_params, other_params, layer), title)


# bits each method accepts in the calculator, and what they mean
CALC_BITS = {"full": (32, 16),    # 32: fp32 master weights + 16-bit compute (AMP); 16: all 16-bit
             "lora": (16, 32),    # the frozen base's dtype
             "qlora": (4, 8)}     # the frozen base: NF4 + double quantization, or int8


def _method_settings(method: str, bits: int) -> dict:
    if method not in CALC_BITS:
        raise ValueError(f"method must be one of {list(CALC_BITS)}; got {method!r}.")
    if bits not in CALC_BITS[method]:
        raise ValueError(f"bits={bits} does not go with method={method!r}: use one of {CALC_BITS[method]} "
                         "(full: 32 = AMP, 16 = pure 16-bit; lora: the base's dtype; qlora: the 4- or "
                         "8-bit base).")
    if method == "full":
        return {"precision": "amp" if bits == 32 else "16"}
    return {"bits": bits}


def memory_calculator(model="llama-2-7b", method: str = "qlora", bits: int = 4, rank: int = 8,
                      batch_size: int = 1, seq_len: int = 512, gradient_checkpointing: bool = True,
                      gpu: str = "T4") -> dict:
    """Does one fine-tuning step fit on a GPU? kit.memory.estimate for the settings, the GPU's
    usable memory (kit.memory.GPUS) and, for each method at its usual width (full AMP, LoRA
    16-bit, QLoRA 4-bit), the largest preset of kit.memory.ARCHS that fits with the same
    rank, batch and length. model: a preset name, an Arch or a transformers config.
    -> {"settings", "estimate" (bytes, Estimate.as_dict()), "total_gb", "gpu_gb", "fits",
        "headroom_gb", "largest" {method: {"name", "params"}}}"""
    from kit import memory as M

    if gpu not in M.GPUS:
        raise ValueError(f"gpu must be one of {list(M.GPUS)}; got {gpu!r}.")
    common = dict(r=rank, batch_size=batch_size, seq_len=seq_len,
                  gradient_checkpointing=gradient_checkpointing)
    est = M.estimate(model, method, **common, **_method_settings(method, bits))
    largest = {}
    for m in CALC_BITS:
        name = M.largest_model_that_fits(m, gpu, **common, **_method_settings(m, CALC_BITS[m][0]))
        largest[m] = {"name": name, "params": M.param_count(name) if name else None}
    name = model if isinstance(model, str) else getattr(model, "name", "custom")
    return {"settings": dict(model=name, method=method, bits=bits, rank=rank, batch_size=batch_size,
                             seq_len=seq_len, gradient_checkpointing=gradient_checkpointing, gpu=gpu),
            "estimate": est.as_dict(), "params": est.params, "trainable": est.trainable,
            "total_gb": est.total / 1e9, "gpu_gb": M.GPUS[gpu] / 1e9, "fits": M.fits(est, gpu),
            "headroom_gb": (M.GPUS[gpu] - est.total) / 1e9, "largest": largest}


def calculator_text(calc: dict) -> str:
    """The calculator's answer in words, component by component (MB)."""
    s, e = calc["settings"], calc["estimate"]
    parts = ", ".join(f"{k.replace('_', ' ')} {e[k] / 1e6:,.0f} MB" for k in
                      ("weights", "quant_constants", "gradients", "optimizer", "activations", "logits", "workspace")
                      if e.get(k))
    verdict = "fits" if calc["fits"] else "does NOT fit"
    largest = "; ".join(f"{m}: {v['name'] or 'nothing'}" for m, v in calc["largest"].items())
    return (f"{s['model']} ({calc['params'] / 1e9:.2f}B), {s['method']} {s['bits']}-bit, r={s['rank']} "
            f"({calc['trainable']:,} trainable): {calc['total_gb']:.2f} GB -> {verdict} on {s['gpu']} "
            f"({calc['gpu_gb']:.0f} GB usable, headroom {calc['headroom_gb']:+.2f} GB)\n  {parts}\n"
            f"  largest preset that fits on {s['gpu']}: {largest}")


def show_calculator(model="llama-2-7b", method: str = "qlora", bits: int = 4, rank: int = 8,
                    batch_size: int = 1, seq_len: int = 512, gradient_checkpointing: bool = True,
                    gpu: str = "T4"):
    """memory_calculator printed and drawn (kit.plots.calculator_figure); a bad combination
    (e.g. full fine-tuning at 4 bits) prints why instead."""
    from kit.plots import calculator_figure

    try:
        calc = memory_calculator(model, method, bits, rank, batch_size, seq_len, gradient_checkpointing, gpu)
    except ValueError as e:
        print(e)
        return None
    print(calculator_text(calc))
    return calculator_figure(calc)


def calculator(model="llama-2-7b", method: str = "qlora", bits: int = 4, rank: int = 8,
               batch_size: int = 1, seq_len: int = 512, gradient_checkpointing: bool = True,
               gpu: str = "T4"):
    """The memory calculator as widgets: "model", "method", "bits", "rank", "batch", "seq len",
    "checkpointing", "GPU"; every change redraws show_calculator below them."""
    import ipywidgets as widgets
    from kit import memory as M

    names = sorted(M.ARCHS, key=lambda n: M.param_count(M.ARCHS[n]))
    controls = {
        "model": widgets.Dropdown(options=names, value=model, description="model"),
        "method": widgets.Dropdown(options=list(CALC_BITS), value=method, description="method"),
        "bits": widgets.Dropdown(options=[32, 16, 8, 4], value=bits, description="bits"),
        "rank": widgets.IntSlider(value=rank, min=1, max=256, description="rank", continuous_update=False),
        "batch_size": widgets.IntSlider(value=batch_size, min=1, max=64, description="batch",
                                        continuous_update=False),
        "seq_len": widgets.Dropdown(options=sorted({256, 512, 1024, 2048, 4096, 8192, seq_len}), value=seq_len,
                                    description="seq len"),
        "gradient_checkpointing": widgets.Checkbox(value=gradient_checkpointing, description="checkpointing"),
        "gpu": widgets.Dropdown(options=list(M.GPUS), value=gpu, description="GPU"),
    }
    out = widgets.interactive_output(lambda **kw: show_figure(show_calculator(**kw)), controls)
    c = list(controls.values())
    return widgets.VBox([widgets.HBox(c[:4]), widgets.HBox(c[4:]), out])


# ============================================================================ 07: scaling out
# The computation behind 07's widget is kit.scaling.breakdown; scaling_text and show_scaling
# print and draw it, and the notebook calls show_scaling once with its parameters.
SCALING_GPU_LINES = ("A100-80GB", "T4")


def scaling_text(parts: dict, model: str, gpus: int, strategy: str) -> str:
    """kit.scaling.breakdown's answer as a small table: GB per GPU, part by part."""
    from kit import memory as M

    names = ("weights", "quant_constants", "gradients", "optimizer", "gathered_layer", "activations",
             "logits", "workspace", "total")
    lines = [f"{model}, {gpus} GPU{'s' if gpus > 1 else ''}, {strategy.upper()}: GB per GPU",
             f"{'part':16s}" + "".join(f"{m:>10s}" for m in parts)]
    for name in names:
        lines.append(f"{name.replace('_', ' '):16s}" + "".join(f"{parts[m][name] / 1e9:10.2f}" for m in parts))
    for gpu in SCALING_GPU_LINES:
        fits = ", ".join(f"{m} {'yes' if parts[m]['total'] <= M.GPUS[gpu] else 'no'}" for m in parts)
        lines.append(f"fits one {gpu} ({M.GPUS[gpu] / 1e9:.0f} GB usable): {fits}")
    return "\n".join(lines)


def show_scaling(model: str = "llama-2-70b", gpus: int = 8, strategy: str = "fsdp", seq_len: int = 512):
    """Per-GPU memory of full fine-tuning, LoRA and QLoRA of `model` on `gpus` GPUs under
    `strategy` (batch 1 per GPU, `seq_len` tokens, gradient checkpointing): printed, and drawn
    by kit.plots.per_gpu_breakdown. A bad value prints why instead."""
    from kit import memory as M
    from kit.plots import per_gpu_breakdown
    from kit.scaling import breakdown

    try:
        parts = breakdown(model, gpus, strategy, seq_len=seq_len)
    except ValueError as e:
        print(e)
        return None
    print(scaling_text(parts, model, gpus, strategy))
    return per_gpu_breakdown(parts, {g: M.GPUS[g] for g in SCALING_GPU_LINES},
                             title=f"{model} on {gpus} GPU{'s' if gpus > 1 else ''}, {strategy.upper()}: "
                                   f"what each GPU holds (batch 1 x {seq_len} per GPU)")


def scaling_explorer(model: str = "llama-2-70b", gpus: int = 8, strategy: str = "fsdp", seq_len: int = 512):
    """Widgets "model" (a kit.memory.ARCHS preset), "gpus" and "strategy" (ddp or fsdp) that
    redraw show_scaling below them."""
    import ipywidgets as widgets
    from kit import memory as M
    from kit.scaling import STRATEGIES

    names = sorted(M.ARCHS, key=lambda n: M.param_count(M.ARCHS[n]))
    controls = {
        "model": widgets.Dropdown(options=names, value=model, description="model"),
        "gpus": widgets.IntSlider(value=gpus, min=1, max=max(16, gpus), description="gpus",
                                  continuous_update=False),
        "strategy": widgets.Dropdown(options=list(STRATEGIES), value=strategy, description="strategy"),
    }
    out = widgets.interactive_output(lambda **kw: show_figure(show_scaling(**kw, seq_len=seq_len)), controls)
    return widgets.VBox([widgets.HBox(list(controls.values())), out])
