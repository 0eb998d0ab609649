"""The step API as docs/writing-a-step.md teaches it: its filter, its test and its recipe run as written,
from a module outside the package, named by class or by entry point."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml
from conftest import write_jsonl

from curation.recipe import RecipeError, load_recipe, parse_recipe
from curation.steps import REGISTRY, Check, FilterParams, FilterStep, UnknownStepError, reason, step_class
from curation.steps.fineweb import FineWebQuality
from curation.steps.gopher import GopherQuality
from curation.thresholds import retention

GUIDE = Path(__file__).parents[1] / "docs" / "writing-a-step.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(), re.S)


@pytest.fixture(scope="module")
def guide_module(tmp_path_factory) -> Path:
    """The guide's filter module, written as a user would save it, importable as `myfilters`."""
    folder = tmp_path_factory.mktemp("userpkg")
    (folder / "myfilters.py").write_text("\n".join(_blocks("python")[:2]))
    (folder / "test_myfilters.py").write_text(_blocks("python")[2])
    dist = folder / "myfilters-0.1.dist-info"  # what installing a package with the guide's entry point leaves
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myfilters\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[curate.steps]\n" + _blocks("toml")[0].split("\n", 1)[1])
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    for name in ("myfilters", "test_myfilters"):
        sys.modules.pop(name, None)
    for name in ("shouting", "no_todo"):
        REGISTRY.pop(name, None)


def test_the_guides_own_test_passes(guide_module):
    import test_myfilters

    test_myfilters.test_shouting_goes_and_its_reason_says_why()


def test_the_guides_filter_is_short_and_declares_what_the_views_read(guide_module):
    import myfilters

    filter_lines = [line for line in _blocks("python")[0].splitlines()
                    if line.strip() and not line.startswith(("#", "import", "from"))]
    assert len(filter_lines) <= 14  # the ten-line filter, its parameters' class included
    assert myfilters.Shouting.signal_bounds() == {"upper_ratio": {"max": "max_upper_ratio"}}
    annotated = myfilters.Shouting(mode="annotate").apply(pa.table({"id": ["x"], "text": ["LOUD text"]}))
    assert annotated.kept.column("shouting__upper_ratio").to_pylist() == pytest.approx([4 / 8])
    view = retention(np.array([0.1, 0.4, 0.9]), np.array([5, 5, 5]), "shouting", "upper_ratio")
    assert view.current == {"max": 0.5} and view.kept_at_current == (2 / 3, 2 / 3)
    assert myfilters.NoTodo().apply(pa.table({"id": ["a", "b"], "text": ["done", "TODO: finish"]})) \
        .rejected.column("reason").to_pylist() == ["no_todo:todo"]


def test_a_recipe_runs_a_step_from_outside_the_package(guide_module, tmp_path, prefect_harness):
    from flows.curate import run_curation

    write_jsonl(tmp_path / "pages.jsonl", [{"id": "calm", "text": "A calm page of ordinary words, written in "
                                                                  "sentence case like most prose."},
                                           {"id": "loud", "text": "BUY NOW!!! THE BEST DEAL OF THE YEAR, ONLY "
                                                                  "TODAY, CLICK HERE AND SAVE BIG!"}])
    recipe_text = _blocks("yaml")[0].replace('"myfilters:Shouting", max_upper_ratio: 0.4',
                                             '"myfilters:Shouting", max_upper_ratio: 0.4, name: shout')
    (tmp_path / "recipe.yaml").write_text(recipe_text)
    recipe = load_recipe(tmp_path / "recipe.yaml")
    manifest = run_curation(recipe, str(tmp_path / "store"), "v", workers=1)
    steps = {s["name"]: s for s in manifest["steps"]}
    assert steps["shout"]["rejected_by_reason"] == {"shouting:upper_ratio": 1} and manifest["rows"] == 1
    by_entry_point = parse_recipe({"inputs": [{"path": str(tmp_path / "pages.jsonl")}],
                                   "steps": [{"step": "shouting", "max_upper_ratio": 0.3}]})
    assert by_entry_point.steps[0].step_class.__name__ == "Shouting"
    assert [name for name, _ in by_entry_point.build_steps()] == ["shouting"]


@pytest.mark.parametrize("step, message", [
    ("no_such_step", "unknown step 'no_such_step'; valid steps: c4_quality, decontaminate"),
    ("nowhere.module:Thing", "cannot import module 'nowhere.module'"),
    ("json:dumps", "step 'json:dumps' is not a step class"),
    ("curation.steps.length:Missing", "module 'curation.steps.length' has no 'Missing'"),
])
def test_a_step_that_cannot_be_found_is_named_when_the_recipe_loads(step, message):
    with pytest.raises(RecipeError, match=re.escape(message)):
        parse_recipe({"inputs": [{"path": "x.jsonl"}], "steps": [{"step": step}]})
    with pytest.raises(UnknownStepError):
        step_class(step)


def test_a_name_taken_by_another_class_is_refused():
    from curation.steps import register

    class Impostor(FilterStep[FilterParams]):
        name = "length_filter"

    with pytest.raises(ValueError, match="step name 'length_filter' is taken by curation.steps.length.LengthFilter"):
        register(Impostor)


def test_checks_give_reasons_in_declared_order_and_params_their_type():
    step = GopherQuality(min_doc_words=5)
    assert type(step.params).__name__ == "GopherQualityParams" and step.params.min_doc_words == 5
    out = step.apply(pa.table({"id": ["a"], "text": ["# # # ..."]}))
    assert out.rejected.column("reason").to_pylist() == ["gopher_quality:words=0<5"]  # the first check that fails
    assert GopherQuality.signal_bounds()["words"] == {"min": "min_doc_words", "max": "max_doc_words"}
    assert FineWebQuality.signal_bounds()["line_punct_ratio"] == {"min": "line_punct_thr"}


@pytest.mark.parametrize("value, op, bound, expected", [
    (12, "<", 50, "r:s=12<50"),
    (0.7996, "<", 0.8, "r:s=0.7996<0.8"),  # enough digits to stay on the failing side
    (0.123456, "<", 0.5, "r:s=0.123<0.5"),
    (0.3000001, ">", 0.3, "r:s=0.3000001>0.3"),
    (3.0, ">=", 1, "r:s=3>=1"),
])
def test_one_reason_format(value, op, bound, expected):
    assert reason("r", "s", value, op, bound) == expected


def test_a_check_compares_as_declared():
    values = np.array([0.0, 0.5, 1.0, np.nan])
    assert Check("s", "<", 0.5).fails(values, 0.5).tolist() == [False, True, True, False]  # NaN breaks no rule
    assert Check("s", ">=", 0.5).keeps(values, 0.5).tolist() == [False, True, True, False]


def test_yaml_recipes_name_external_steps_by_class(guide_module, tmp_path):
    (tmp_path / "in.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"inputs": [{"path": "in.jsonl"}],
                                                     "steps": [{"step": "myfilters:NoTodo"}]}))
    recipe = load_recipe(tmp_path / "r.yaml")
    assert recipe.steps[0].instance_name == "no_todo" and recipe.stages()[1].steps == ("no_todo",)
