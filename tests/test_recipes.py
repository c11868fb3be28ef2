"""Recipes: every knob documented and checked; bad input refused before any model loads."""
import pytest
import torch
import yaml

from kit import finetune_cli, recipes
from kit.memory import GPUS
from kit.recipes import KNOBS, RecipeError

GPU = torch.cuda.is_available()


def test_every_knob_is_documented_and_its_default_valid():
    sectioned = [n for _, names in recipes.SECTIONS.values() for n in names]
    assert sorted(sectioned) == sorted(KNOBS) and len(sectioned) == len(set(sectioned))
    for name, knob in KNOBS.items():
        assert len(knob.help) > 40, name
        assert recipes.coerce(name, knob.default) == knob.default


def test_recipe_files_are_rendered_from_the_table(tmp_path):
    recipes.sync(tmp_path)
    for name in recipes.RECIPES:
        committed = recipes.RECIPES_DIR / f"{name}.yaml"
        assert committed.read_text() == (tmp_path / f"{name}.yaml").read_text(), \
            f"{committed} is out of date: run python -m kit sync-recipes"
        text = committed.read_text()
        for knob in KNOBS:  # every knob is in every file, preceded by its comment
            lines = text.splitlines()
            at = next(i for i, line in enumerate(lines) if line.startswith(f"{knob}: "))
            assert lines[at - 1].startswith("# "), (name, knob)


@pytest.mark.parametrize("name", sorted(recipes.RECIPES))
def test_each_recipe_loads_and_cpu_ones_pass_the_checks_here(name):
    recipe = recipes.load(name)
    assert recipe["_name"] == name
    _, values = recipes.RECIPES[name]
    assert {k: recipe[k] for k in values} == {k: recipes.coerce(k, v) for k, v in values.items()}
    if values.get("device") == "cuda" and not GPU:
        with pytest.raises(RecipeError, match="no CUDA GPU.*cpu-lora.yaml"):
            recipes.check(recipe)
    elif not GPU:
        checked = recipes.check(recipe)
        assert checked["quantization"] == ("nf4" if checked["method"] == "qlora" else "none")


def test_gpu_recipes_estimates_fit_their_gpus():
    assert recipes.estimate_for(recipes.RECIPES["t4-qlora-7b"][1]).total < GPUS["T4"]
    for name in ("a100-lora", "a100-qlora"):
        assert recipes.estimate_for(recipes.RECIPES[name][1]).total < GPUS["A100-40GB"]
    assert recipes.estimate_for({"model": "my/own-model"}) is None


@pytest.mark.parametrize("args, match", [
    (["--lerning_rate", "1e-4"], r"Unknown knob 'lerning_rate'.*Did you mean 'learning_rate'"),
    (["--lora-rank", "4"], r"Unknown knob 'lora_rank'.*Did you mean 'lora_r'"),
    (["--steps", "ten"], r"steps must be a whole number; got 'ten' \(--steps\)"),
    (["--steps", "0"], r"steps must be >= 1"),
    (["--batch_size", "1.5"], r"batch_size must be a whole number"),
    (["--learning_rate", "fast"], r"learning_rate must be a number \(e.g. 2e-4\)"),
    (["--gradient_checkpointing", "maybe"], r"gradient_checkpointing must be true or false"),
    (["--method", "qlor"], r"method must be one of full, lora, qlora.*Did you mean 'qlora'"),
    (["--steps"], r"--steps needs a value"),
    (["steps", "3"], r"Expected --knob value"),
    (["--model", "null"], r"model needs a value"),
])
def test_bad_overrides_are_refused_with_the_fix(args, match):
    with pytest.raises(RecipeError, match=match):
        recipes.load("cpu-lora", recipes.parse_overrides(args))


def test_overrides_win_over_the_file_which_wins_over_defaults(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("steps: 30\nlearning_rate: 1e-4\nlora_targets: [q_proj, v_proj]\n")
    r = recipes.load(str(path), recipes.parse_overrides(["--steps=7", "--lora-r", "4",
                                                         "--warmup_steps", "null"]))
    assert (r["steps"], r["lora_r"], r["learning_rate"], r["warmup_steps"]) == (7, 4, 1e-4, None)
    assert r["lora_targets"] == ["q_proj", "v_proj"] and r["batch_size"] == KNOBS["batch_size"].default
    assert recipes.load(None, {"lora_targets": "q_proj,v_proj"})["lora_targets"] == ["q_proj", "v_proj"]
    rendered = yaml.safe_load(recipes.render({k: r[k] for k in KNOBS}, "test"))
    assert {k: recipes.coerce(k, v) for k, v in rendered.items()} == {k: r[k] for k in KNOBS}


def test_a_bad_recipe_file_names_the_file_and_the_knob(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("lerning_rate: 1e-4\n")
    with pytest.raises(RecipeError, match=r"in typo.yaml.*Did you mean 'learning_rate'"):
        recipes.load(str(path))
    with pytest.raises(RecipeError, match=r"neither a file nor a recipe name.*Did you mean 'cpu-lora'"):
        recipes.load("cpu-lorra")


@pytest.mark.parametrize("args, match", [
    (["--method", "qlora", "--quantization", "none"], "quantization must be nf4 or fp4"),
    (["--method", "lora", "--quantization", "nf4"], "is for method: qlora"),
    (["--data_file", "/no/such/file.jsonl"], "is not a file"),
    (["--model", "someone/some-model"], "not reachable"),
] + ([] if GPU else [(["--device", "cuda"], "no CUDA GPU"),
                     (["--optimizer", "paged_adamw_8bit"], "needs a CUDA GPU")]))
def test_cross_checks_fail_before_any_model_is_loaded(args, match, monkeypatch, capsys):
    def no_loading(*a, **k):
        raise AssertionError("a model was loaded before the recipe was checked")

    monkeypatch.setattr("kit.models.load_model", no_loading)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert finetune_cli.main("cpu-lora", args) == 2
    assert match in capsys.readouterr().err


def test_accelerate_files_match_the_kit_and_work_without_the_repository(tmp_path, monkeypatch):
    for name, settings in recipes.ACCELERATE.items():
        assert yaml.safe_load(recipes.accelerate_config(name).read_text()) == settings, name
    monkeypatch.setattr(recipes, "RECIPES_DIR", tmp_path / "no-repo")   # pip-installed, as in Colab
    monkeypatch.setenv("KIT_CACHE", str(tmp_path / "cache"))
    for name, settings in recipes.ACCELERATE.items():
        path = recipes.accelerate_config(name)
        assert path.is_relative_to(tmp_path / "cache") and yaml.safe_load(path.read_text()) == settings
    assert recipes.load("cpu-qlora")["method"] == "qlora"   # rendered from RECIPES into the cache
    with pytest.raises(RecipeError, match="cpu-2proc"):
        recipes.accelerate_config("tpu")


@pytest.mark.parametrize("fsdp, recipe, expected", [("true", "cpu-qlora", torch.float32),
                                                    ("", "cpu-qlora", None), ("true", "cpu-lora", None)])
def test_an_fsdp_launch_packs_4bit_codes_in_the_compute_dtype(fsdp, recipe, expected, monkeypatch, tmp_path):
    """Under `accelerate launch` with an FSDP config (ACCELERATE_USE_FSDP=true), QLoRA loads
    with quant_storage = the compute dtype; otherwise the default uint8 packing."""
    seen = {}

    class Loaded(Exception):
        pass

    def capture(*a, **k):
        seen.update(k)
        raise Loaded

    monkeypatch.setattr("kit.models.load_model", capture)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", fsdp)
    with pytest.raises(Loaded):
        finetune_cli.main(recipe, ["--output_dir", str(tmp_path)])
    assert seen["quant_storage"] == expected
