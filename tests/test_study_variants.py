"""kit.study.variants: the matched rank, a small arm on tiny-llama with every output the notebook
reads, resuming without training again."""
import dataclasses
import json

import pytest

from kit.study import variants as sv
from kit.arch import linear_shapes, resolve_arch

SMALL = dataclasses.replace(sv.QUICK, rates={"lora": [1e-2, 1e-1], "dora": [1e-2], "rslora": [1e-2],
                                             "loraplus": [1e-2], "pissa": [1e-2]})


@pytest.mark.parametrize("targets", list(sv.TARGETS.values()))
def test_the_matched_rank_trains_as_many_parameters_as_all_linear_layers(targets):
    shapes = linear_shapes(resolve_arch("smollm2-135m"))
    count = lambda names, r: r * sum((shapes[n][0] + shapes[n][1]) * shapes[n][2] for n in names)  # noqa: E731
    r = sv.matched_rank("smollm2-135m", targets, 8)
    per_rank = count(targets, 1)
    assert abs(count(targets, r) - count(shapes, 8)) <= per_rank / 2      # the nearest whole rank
    assert r > 8                                                           # fewer layers, higher rank


@pytest.fixture(scope="module")
def arm(tmp_path_factory):
    out = tmp_path_factory.mktemp("variants")
    return out, sv.run(SMALL, out)


@pytest.mark.slow
def test_a_small_arm_records_every_arm_and_compares_each_with_lora(arm):
    out, s = arm
    assert set(s["arms"]) == set(sv.VARIANTS) | set(sv.TARGETS)
    trainable = {name: a["trainable"] for name, a in s["arms"].items()}
    assert trainable["dora"] > trainable["lora"] == trainable["rslora"] == trainable["loraplus"] == trainable["pissa"]
    for name in sv.TARGETS:                                  # within one rank's worth of all-linear's count
        assert abs(trainable[name] - trainable["lora"]) < 0.1 * trainable["lora"]
        assert s["arms"][name]["lr"] == s["arms"]["lora"]["lr"] and not s["arms"][name]["tuned"]
    assert s["arms"]["lora"]["lr"] == min(s["arms"]["lora"]["sweep"], key=lambda r: r["best_val"])["lr"]
    for a in s["arms"].values():
        assert a["seeds"] == SMALL.seeds and a["answer_nll"]["low"] <= a["answer_nll"]["mean"] <= a["answer_nll"]["high"]
    assert {c["b"] for c in s["comparisons"]} == set(s["arms"]) - {"lora"}
    for c in s["comparisons"]:
        assert c["low"] <= c["diff"] <= c["high"] and c["step_time_ratio"] > 0
        assert c["verdict"] == "different" or c["verdict"].startswith("could not detect")
    for f in (out / "runs").glob("*.json"):            # scored at the best step: every run at an arm's rate
        r = json.loads(f.read_text())
        assert r["history"][0]["step"] == 0 and r["best_step"] is not None
        if r["lr"] == s["arms"][r["arm"]]["lr"]:
            assert len(r["measured"]["answer_nll"]) == SMALL.n_test
        else:
            assert r["seed"] == 0 and r["measured"] is None
    assert "| pissa |" in sv.report(s) and s["wall_s"] > 0


@pytest.mark.slow
def test_the_arm_resumes_without_training_again(arm, monkeypatch):
    out, first = arm
    monkeypatch.setattr(sv, "train_one", lambda *a, **k: pytest.fail("a finished run ran again"))
    again = sv.run(SMALL, out)
    assert again["arms"] == first["arms"] and again["calls"] == first["calls"] + 1
    with pytest.raises(ValueError, match="other settings"):
        sv.run(sv.QUICK, out)
