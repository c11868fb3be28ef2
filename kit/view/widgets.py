"""Widgets (ipywidgets) that redraw a plot or table when a knob moves.

Widgets only draw: each one calls an engine function (kit.machine.memory.gpu_fit, kit.scratch.quant.bits_view,
kit.machine.scaling.breakdown, ...) that the notebook also calls once with its parameter values and
records, so a headless run exercises the same computation. Every control has a `description`
(e.g. "rank", "targets") a browser test can find.
"""
from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import display

from kit.arch import GPUS, METHOD_NAMES, by_size
from kit.engine.compare import compare
from kit.machine import memory as M
from kit.machine.scaling import GPU_LINES, STRATEGIES, breakdown, breakdown_text
from kit.scratch.quant import bits_view
from kit.view.plots import bits_figure, calculator_figure, per_gpu_breakdown


# ============================================================================ 01-03: full FT and LoRA
def show_figure(obj) -> None:
    """Display what a draw function returned (a matplotlib Figure is shown, then closed)."""
    if hasattr(obj, "savefig"):
        display(obj)
        plt.close(obj)
    elif obj is not None:
        display(obj)


def rank_explorer(draw, value: int = 8, min: int = 1, max: int = 64, description: str = "rank"):
    """An IntSlider (`description`, default "rank") that redraws `draw(r)` below itself.
    `draw` is a plain function of the rank returning a Figure (or anything displayable)."""
    slider = widgets.IntSlider(value=value, min=min, max=max, step=1, description=description,
                               continuous_update=False)
    out = widgets.interactive_output(lambda r: show_figure(draw(r)), {"r": slider})
    return widgets.VBox([slider, out])


def choice_explorer(draw, options, value=None, description: str = "targets"):
    """A Dropdown (`description`, default "targets") that redraws `draw(choice)` below itself."""
    options = list(options)
    dropdown = widgets.Dropdown(options=options, value=options[0] if value is None else value,
                                description=description)
    out = widgets.interactive_output(lambda choice: show_figure(draw(choice)), {"choice": dropdown})
    return widgets.VBox([dropdown, out])


# ============================================================================ 04-06: quantization, QLoRA, choosing
def show_bits(w, bits: int, blocksize: int = 64, linear_params: int | None = None,
              other_params: int = 0, layer: str = "", title: str = ""):
    """kit.scratch.quant.bits_view drawn by kit.view.plots.bits_figure (what the "bits" slider redraws)."""
    return bits_figure(bits_view(w, bits, blocksize, linear_params, other_params, layer), title)


def show_calculator(model="llama-2-7b", method: str = "qlora", bits: int = 4, rank: int = 8,
                    batch_size: int = 1, seq_len: int = 512, gradient_checkpointing: bool = True,
                    gpu: str = "T4"):
    """kit.machine.memory.gpu_fit printed and drawn (kit.view.plots.calculator_figure); a bad combination
    (e.g. full fine-tuning at 4 bits) prints why instead."""
    try:
        calc = M.gpu_fit(model, method, bits, rank, batch_size, seq_len, gradient_checkpointing, gpu)
    except ValueError as e:
        print(e)
        return None
    print(M.gpu_fit_text(calc))
    return calculator_figure(calc)


def calculator(model="llama-2-7b", method: str = "qlora", bits: int = 4, rank: int = 8,
               batch_size: int = 1, seq_len: int = 512, gradient_checkpointing: bool = True,
               gpu: str = "T4"):
    """The memory calculator as widgets: "model", "method", "bits", "rank", "batch", "seq len",
    "checkpointing", "GPU"; every change redraws show_calculator below them."""
    controls = {
        "model": widgets.Dropdown(options=by_size(), value=model, description="model"),
        "method": widgets.Dropdown(options=list(METHOD_NAMES), value=method, description="method"),
        "bits": widgets.Dropdown(options=[32, 16, 8, 4], value=bits, description="bits"),
        "rank": widgets.IntSlider(value=rank, min=1, max=256, description="rank", continuous_update=False),
        "batch_size": widgets.IntSlider(value=batch_size, min=1, max=64, description="batch",
                                        continuous_update=False),
        "seq_len": widgets.Dropdown(options=sorted({256, 512, 1024, 2048, 4096, 8192, seq_len}), value=seq_len,
                                    description="seq len"),
        "gradient_checkpointing": widgets.Checkbox(value=gradient_checkpointing, description="checkpointing"),
        "gpu": widgets.Dropdown(options=list(GPUS), value=gpu, description="GPU"),
    }
    out = widgets.interactive_output(lambda **kw: show_figure(show_calculator(**kw)), controls)
    c = list(controls.values())
    return widgets.VBox([widgets.HBox(c[:4]), widgets.HBox(c[4:]), out])


# ============================================================================ 07: scaling out
def show_scaling(model: str = "llama-2-70b", gpus: int = 8, strategy: str = "fsdp", seq_len: int = 512):
    """Per-GPU memory of full fine-tuning, LoRA and QLoRA of `model` on `gpus` GPUs under
    `strategy` (batch 1 per GPU, `seq_len` tokens, gradient checkpointing): kit.machine.scaling.breakdown
    printed, and drawn by kit.view.plots.per_gpu_breakdown. A bad value prints why instead."""
    try:
        parts = breakdown(model, gpus, strategy, seq_len=seq_len)
    except ValueError as e:
        print(e)
        return None
    print(breakdown_text(parts, model, gpus, strategy))
    return per_gpu_breakdown(parts, {g: GPUS[g] for g in GPU_LINES},
                             title=f"{model} on {gpus} GPU{'s' if gpus > 1 else ''}, {strategy.upper()}: "
                                   f"what each GPU holds (batch 1 x {seq_len} per GPU)")


def scaling_explorer(model: str = "llama-2-70b", gpus: int = 8, strategy: str = "fsdp", seq_len: int = 512):
    """Widgets "model" (a kit.arch.ARCHS preset), "gpus" and "strategy" (ddp or fsdp) that
    redraw show_scaling below them."""
    controls = {
        "model": widgets.Dropdown(options=by_size(), value=model, description="model"),
        "gpus": widgets.IntSlider(value=gpus, min=1, max=max(16, gpus), description="gpus",
                                  continuous_update=False),
        "strategy": widgets.Dropdown(options=list(STRATEGIES), value=strategy, description="strategy"),
    }
    out = widgets.interactive_output(lambda **kw: show_figure(show_scaling(**kw, seq_len=seq_len)), controls)
    return widgets.VBox([widgets.HBox(list(controls.values())), out])


# ============================================================================ 08: your own data
def chat_box(model, tokenizer, merged=None, prompt: str = "", max_new_tokens: int = 96):
    """A "prompt" text box and an "ask" button; the answers of the base model, each adapter and
    the merged model (kit.engine.compare.compare) appear side by side, token by token as generated."""
    text = widgets.Text(value=prompt, description="prompt", layout=widgets.Layout(width="80%"))
    button = widgets.Button(description="ask")
    names = ["base", *model.peft_config, *(["merged"] if merged is not None else [])]
    boxes = {n: widgets.Textarea(description=n, layout=widgets.Layout(width="32%", height="8em"))
             for n in names}

    def ask(_=None):
        for box in boxes.values():
            box.value = ""

        def piece(name, text_piece):
            boxes[name].value += text_piece
        compare(model, tokenizer, text.value, merged=merged, max_new_tokens=max_new_tokens, on_text=piece)

    button.on_click(ask)
    return widgets.VBox([widgets.HBox([text, button]), widgets.HBox(list(boxes.values()))])
