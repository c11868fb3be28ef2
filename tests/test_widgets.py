"""kit.view.widgets: each control has the description a learner (and the browser test) finds, moving
it calls the engine again with the new value, and a bad combination is explained, not raised.
Without a kernel nothing is displayed, so the tests watch what the widgets call."""
import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402

from kit.view import widgets  # noqa: E402


def controls(box) -> dict:
    """description -> control, for every control inside a widget tree."""
    found, todo = {}, [box]
    while todo:
        w = todo.pop()
        todo += list(getattr(w, "children", ()))
        if getattr(w, "description", ""):
            found[w.description] = w
    return found


def test_rank_explorer_redraws_with_the_new_rank():
    seen = []
    box = widgets.rank_explorer(lambda r: seen.append(r), value=8, max=64)
    slider = controls(box)["rank"]
    assert (slider.value, slider.min, slider.max) == (8, 1, 64) and seen == [8]
    slider.value = 16
    assert seen == [8, 16]


def test_choice_explorer_offers_the_options_and_redraws():
    seen = []
    box = widgets.choice_explorer(lambda c: seen.append(c), ["all-linear", "q,v"], description="targets")
    dropdown = controls(box)["targets"]
    assert list(dropdown.options) == ["all-linear", "q,v"] and seen == ["all-linear"]
    dropdown.value = "q,v"
    assert seen[-1] == "q,v"


def test_calculator_controls_call_gpu_fit_with_what_they_show(monkeypatch):
    calls = []
    monkeypatch.setattr(widgets, "show_calculator", lambda **kw: calls.append(kw))
    box = widgets.calculator("llama-2-7b", "qlora", 4, gpu="T4")
    c = controls(box)
    assert set(c) == {"model", "method", "bits", "rank", "batch", "seq len", "checkpointing", "GPU"}
    assert calls[-1]["model"] == "llama-2-7b" and calls[-1]["gpu"] == "T4"
    c["GPU"].value = "A100-80GB"
    c["rank"].value = 64
    assert calls[-1]["gpu"] == "A100-80GB" and calls[-1]["rank"] == 64
    assert list(c["model"].options)[0] == "smollm2-135m"          # smallest model first


def test_show_calculator_prints_the_answer_or_why_not(capsys):
    fig = widgets.show_calculator("llama-2-7b", "qlora", 4, gpu="T4")
    assert fig is not None and "fits on T4" in capsys.readouterr().out
    assert widgets.show_calculator("llama-2-7b", "full", 4) is None    # full at 4 bits: no such thing
    assert "bits=4 does not go with method='full'" in capsys.readouterr().out


def test_scaling_explorer_and_its_text(monkeypatch, capsys):
    fig = widgets.show_scaling("llama-2-70b", 8, "fsdp")
    out = capsys.readouterr().out
    assert fig is not None and "llama-2-70b, 8 GPUs, FSDP: GB per GPU" in out and "fits one T4" in out
    assert widgets.show_scaling("llama-2-70b", 0, "fsdp") is None
    assert "gpus must be a whole number" in capsys.readouterr().out
    calls = []
    monkeypatch.setattr(widgets, "show_scaling", lambda **kw: calls.append(kw))
    c = controls(widgets.scaling_explorer("llama-2-7b", 2, "ddp", seq_len=256))
    c["strategy"].value = "fsdp"
    assert calls[-1] == {"model": "llama-2-7b", "gpus": 2, "strategy": "fsdp", "seq_len": 256}


def test_show_bits_draws_bits_view():
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
    fig = widgets.show_bits(w, 4, 64, title="w")
    assert fig.axes and "4" in " ".join(ax.get_title() for ax in fig.axes)
