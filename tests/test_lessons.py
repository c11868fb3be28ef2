"""Lessons quote their own runs: the committed lessons are the rendering of the committed
reference run, every templated key must exist in the results, and no lesson states a measured
number with a unit outside a template, unless it is a cited number from the literature."""
import re

import pytest

from kit.view import lessons

TEMPLATES = sorted(lessons.TEMPLATES.glob("[0-9][0-9]-*.md"))
README = lessons.TEMPLATES / lessons.README
# Numbers with a unit that a lesson may write as text: each from a cited source (paper, seed,
# vendor), never from a run of the kit. "<the text as written>": "<its source>"
CITED = {
    "35 MB": "Hu et al. 2021, LoRA, section 4.2: the GPT-3 175B checkpoint at r = 4 on W_q, W_v",
    "350 GB": "Hu et al. 2021, LoRA, section 4.2: the full GPT-3 175B checkpoint",
    "0.5-5%": "the seed blog post: the share of parameters LoRA trains",
    "~100%": "the seed blog post's overview table: share of parameters full fine-tuning trains",
    "per 1GB model": "the seed blog post's table header, memory needed per 1GB model",
    "120 GB": "LLaMA-Factory's README, hardware table, Full AMP row for 7B (the seed's size table)",
    "24 GB": "NVIDIA: an RTX 3090/4090's memory, the cards of Answer.AI's 70B-at-home post (2024-03-06)",
}
# Numbers with a unit that are conventions, not measurements
CONVENTIONS = {"95%": "the confidence level of every interval (kit.scratch.stats)",
               "A100-80GB": "a GPU's product name (kit.arch.GPUS)",
               "15 GB": "what the kit counts as a T4's usable memory (kit.arch.GPUS['T4'])"}
UNIT = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?\s?(?:%|[KMGT]i?B\b|s/step\b|tokens/s\b|ms\b|s\b|x\b|GFLOP/s\b)")


def test_every_lesson_has_a_template():
    committed = sorted(p.name for p in lessons.LESSONS.glob("[0-9][0-9]-*.md"))
    assert [t.name for t in TEMPLATES] == committed


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.stem)
def test_the_lesson_is_the_rendering_of_the_reference(template):
    ctx = lessons.context(lessons.REFERENCE / "results", lessons.REFERENCE / "study")
    rendered = lessons.render(template.name, ctx)
    committed = (lessons.LESSONS / template.name).read_text()
    assert rendered == committed, (f"lessons/{template.name} is not the rendering of its template with "
                                   "the reference: run `python -m kit lessons`")


def test_the_readme_is_the_rendering_of_the_reference():
    ctx = lessons.context(lessons.REFERENCE / "results", lessons.REFERENCE / "study")
    assert lessons.render(lessons.README, ctx) == (lessons.REPO_ROOT / "README.md").read_text(), \
        "README.md is not the rendering of lessons/templates/README.md: run `python -m kit lessons`"


def test_a_learners_run_renders_every_lesson(tmp_path):
    """A run folder of `make run` has its results and outcomes.json but no reference.json (nor the
    reference's benchmarks): every template renders."""
    import shutil
    shutil.copytree(lessons.REFERENCE / "results", tmp_path / "results")
    shutil.copy(lessons.REFERENCE / "outcomes.json", tmp_path)
    written = lessons.render_all(tmp_path / "results", lessons.REFERENCE / "study", tmp_path / "lessons")
    assert sorted(p.name for p in written) == [t.name for t in TEMPLATES]


def test_a_key_the_results_do_not_hold_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "99-test.md").write_text("Step time {{ r01.no_such_key | s }}.\n")
    monkeypatch.setattr(lessons, "TEMPLATES", tmp_path)
    ctx = lessons.context(lessons.REFERENCE / "results", lessons.REFERENCE / "study")
    with pytest.raises(ValueError, match=r"99-test.md.*no_such_key"):
        lessons.render("99-test.md", ctx)
    (tmp_path / "98-test.md").write_text("Steps {{ r01.step_time_s | s(2) }}.\n")
    assert lessons.render("98-test.md", ctx) == f"Steps {ctx['r01']['step_time_s']:.2f} s.\n"


def _untemplated(text: str) -> str:
    """The template with its expressions and tags removed: what it states as plain text."""
    return re.sub(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", " ", text, flags=re.S)


@pytest.mark.parametrize("template", TEMPLATES + [README] + sorted((lessons.TEMPLATES / "parts").glob("*.md")),
                         ids=lambda p: p.stem)
def test_no_lesson_states_a_measured_number_outside_a_template(template):
    text = _untemplated(template.read_text())
    for cited in [*CITED, *CONVENTIONS]:
        text = text.replace(cited, " ")
    found = [m.group(0) for m in UNIT.finditer(text)]
    assert not found, (f"{template.name} states {found} as text: template it from the results, or "
                       "add it to CITED with its source if it comes from the literature")


def test_the_check_catches_a_number_typed_by_hand():
    assert UNIT.findall(_untemplated("LoRA took 4.8 s/step, {{ r03.x | s }}; 37.5% of 40 items")) == ["4.8 s/step", "37.5%"]
    assert UNIT.findall("Llama-2-7B, 30 layers, r = 8") == []


def test_filters_format_as_lessons_write():
    assert lessons.pct(0.375, 1) == "37.5%" and lessons.mb(9_820_000) == "9.8 MB"
    assert lessons.gb(12.8e9) == "12.8 GB" and lessons.num(12345.6) == "12,346"
    assert lessons.sig(0.000316) == "0.00032" and lessons.times(1.0712) == "1.07x"
    assert lessons.interval((0.307, 0.6017)) == "31-60%"
    with pytest.raises(ValueError, match="missing value"):
        lessons.pct(None)
