"""Instruction records from installed docstrings: deterministic, well formed, split without leaks, and
corrupted copies that change exactly the outputs they say and nothing else."""

from __future__ import annotations

import json
import re
import sys
import textwrap

import pytest

from curation.demo.instructions import (
    api_fact_records,
    first_sentence,
    garble_outputs,
    split_records,
    swap_outputs,
    truncate_outputs,
    write_jsonl,
)

# Small stdlib modules: module functions, classes with methods (difflib), and a dotted module name (os.path).
MODULES = ["difflib", "os.path", "textwrap"]
CORRUPTIONS = {"swap": swap_outputs, "garble": garble_outputs, "truncate": truncate_outputs}
SENTENCE_BREAK = re.compile(r"[.!?]\s+[A-Z]")


@pytest.fixture(scope="module")
def records() -> list[dict[str, str]]:
    return api_fact_records(MODULES, seed=0)


def module_and_qualname(record_id: str) -> tuple[str, str]:
    """Split an id with the modules this test asked for (independent of the code's own resolution)."""
    name = record_id.removeprefix("api-").split("-")[0]
    module = max((m for m in MODULES if name.startswith(m + ".")), key=len)
    return module, name[len(module) + 1:]


def owner(record_id: str) -> str:
    """The module-level name a record is about: a class for its methods."""
    module, qualname = module_and_qualname(record_id)
    return f"{module}.{qualname.split('.')[0]}"


def test_records_are_deterministic_and_well_formed(records):
    assert api_fact_records(list(reversed(MODULES)), seed=0) == records
    assert len(records) >= 40
    ids = [r["id"] for r in records]
    assert len(set(ids)) == len(ids) and ids == sorted(ids)
    assert any(i.startswith("api-difflib.SequenceMatcher.") for i in ids)  # methods, not only top level
    assert "api-os.path.join" in ids and "api-textwrap.dedent" in ids
    for record in records:
        assert set(record) == {"id", "instruction", "input", "output", "task_type"}
        assert record["task_type"] == "api_fact"
        module, qualname = module_and_qualname(record["id"])
        assert not any(part.startswith("_") for part in qualname.split(".")), record["id"]
        assert f"{module}.{qualname}" in record["instruction"] + record["input"] or qualname in record["instruction"]
        output = record["output"]
        assert output.endswith(".") and not SENTENCE_BREAK.search(output), output
        assert 20 <= len(output) <= 300 and output == " ".join(output.split())
    assert len({r["output"] for r in records}) == len(records)


def test_template_depends_on_the_name_only(records):
    alone = {r["id"]: r for r in api_fact_records(["textwrap"], seed=0)}
    assert alone == {r["id"]: r for r in records if r["id"].startswith("api-textwrap.")}
    templates = {r["instruction"].replace(r["id"].removeprefix("api-"), "NAME") for r in records}
    assert len(templates) >= 3


FIXTURE_MODULE = textwrap.dedent('''
    """A module whose names exercise every rule of which APIs are asked about."""
    from json import dumps  # a re-export: json's API, not this module's


    def public_function(x):
        """Return the documented value of the public function.  More detail follows."""


    def _private_function():
        """Return something private that is never asked about."""


    def same_answer_a():
        """Return the answer that two functions share."""


    def same_answer_b():
        """Return the answer that two functions share."""


    alias_of_public = public_function


    def undocumented():
        pass


    class Widget:
        """A widget that holds documented methods for the test."""

        def __init__(self):
            """Initialize self.  See help(type(self)) for accurate signature."""

        def spin(self):
            """Spin the widget around its own axis."""

        @classmethod
        def build(cls):
            """Build a widget from nothing at all."""

        @staticmethod
        def check():
            """Check that a widget could be built here."""

        @property
        def size(self):
            """The size of the widget in millimetres."""

        def _hidden(self):
            """A hidden method that is never asked about."""

        rotate = spin

        class Inner:
            """A nested class, which is not a method of the widget."""
''')


def test_only_public_documented_apis_defined_in_the_module_are_asked_about(tmp_path, monkeypatch):
    (tmp_path / "apifacts_fixture_module.py").write_text(FIXTURE_MODULE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "apifacts_fixture_module", raising=False)
    try:
        built = api_fact_records(["apifacts_fixture_module"], seed=0)
    finally:
        sys.modules.pop("apifacts_fixture_module", None)
    names = [r["id"].removeprefix("api-apifacts_fixture_module.") for r in built]
    # not: a re-export, private names, aliases, an undocumented function, a property, a nested class,
    # and the second of two APIs with the same answer (which would leak that answer across a split)
    assert names == ["Widget", "Widget.build", "Widget.check", "Widget.spin", "public_function", "same_answer_a"]
    assert built[-2]["output"] == "Return the documented value of the public function."


@pytest.mark.parametrize(("doc", "expected"), [
    ("Return the sum of a and b", "Return the sum of a and b."),
    ("make an iterator over   the\n  values.  Then more.", "Make an iterator over the values."),
    ("Convert references (e.g. &gt;) in the text s.  More text.", "Convert references (e.g. &gt;) in the text s."),
    ("Return a bytes object containing the values v1, v2, ... packed.  More.",
     "Return a bytes object containing the values v1, v2, ... packed."),
    ("dtype(dtype, align=False)\n--\n\ndtype(dtype, [metadata])\n\nCreate a data type object.\n\nMore.",
     "Create a data type object."),
    ("einsum(subscripts, *operands,\n       optimize=False)\n\nEvaluates the Einstein summation convention.",
     "Evaluates the Einstein summation convention."),
    ("Create and return a new object.  See help(type) for accurate signature.", None),
    ("str -> Construct a date from a string in ISO 8601 format.", None),
    ("Return one of the following:\n\n* a\n* b", None),
    ("Return x squared.", None),  # 17 characters: below the 20-character floor
    ("Return " + "very " * 60 + "long.", None),
    (None, None),
])
def test_first_sentence(doc, expected):
    assert first_sentence(doc) == expected


def test_max_records_keeps_a_growing_seeded_subset(records):
    small = api_fact_records(MODULES, seed=0, max_records=10)
    larger = api_fact_records(MODULES, seed=0, max_records=20)
    assert len(small) == 10 and len(larger) == 20
    assert [r["id"] for r in small] == sorted(r["id"] for r in small)
    assert {r["id"] for r in small} <= {r["id"] for r in larger} <= {r["id"] for r in records}


def test_split_never_puts_one_owner_on_both_sides(records):
    train, held_out = split_records(records, held_out_share=0.3, seed=0)
    assert train and held_out and len(train) + len(held_out) == len(records)
    assert {owner(r["id"]) for r in train}.isdisjoint(owner(r["id"]) for r in held_out)
    assert split_records(records, 0.3, 0) == (train, held_out)
    # an owner's side does not depend on the other records, and a corrupted copy goes with its original
    held_ids = {r["id"] for r in held_out}
    assert {r["id"] for r in split_records(records[::2], 0.3, 0)[1]} == held_ids & {r["id"] for r in records[::2]}
    swapped_held = split_records(swap_outputs(records, 0.5, seed=0), 0.3, 0)[1]
    assert {r["id"].removesuffix("-swap") for r in swapped_held} == held_ids
    assert split_records(records, 0.0, 0)[1] == [] and split_records(records, 1.0, 0)[0] == []


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 1.0])
def test_corruption_changes_exactly_its_share_and_nothing_else(records, kind, share):
    corrupted = CORRUPTIONS[kind](records, share, seed=3)
    assert corrupted == CORRUPTIONS[kind](records, share, seed=3)
    assert len(corrupted) == len(records)
    changed = 0
    for before, after in zip(records, corrupted):
        assert after["id"] == f"{before['id']}-{kind}"
        assert {k: v for k, v in after.items() if k not in ("id", "output")} == \
               {k: v for k, v in before.items() if k not in ("id", "output")}
        changed += after["output"] != before["output"]
    assert changed == round(share * len(records))


def test_each_corruption_does_what_it_says(records):
    outputs = {r["output"] for r in records}
    for before, after in zip(records, swap_outputs(records, 1.0, seed=0)):
        assert after["output"] != before["output"] and after["output"] in outputs
    for before, after in zip(records, garble_outputs(records, 1.0, seed=0)):
        assert after["output"] != before["output"] and after["output"].endswith(".")
        assert sorted(after["output"].removesuffix(".").split()) == sorted(before["output"].removesuffix(".").split())
    eligible = [r for r in records if len(r["output"].split()) > 3]
    for before, after in zip(eligible, truncate_outputs(eligible, 1.0, seed=0)):
        assert after["output"].split() == before["output"].split()[:3]
    assert swap_outputs(records, 0.5, seed=0) != swap_outputs(records, 0.5, seed=1)


def test_garble_changes_even_a_two_word_output():
    two_words = [{"id": f"api-m.f{i}", "instruction": "What does `m.f` do?", "input": "", "output": "Parse input.",
                  "task_type": "api_fact"} for i in range(20)]
    assert {r["output"] for r in garble_outputs(two_words, 1.0, seed=0)} == {"input Parse."}


def test_swap_of_a_single_record_never_gives_its_own_output(records):
    three = records[:3]
    for seed in range(20):
        [(before, after)] = [(b, a) for b, a in zip(three, swap_outputs(three, 0.34, seed))
                             if a["output"] != b["output"]]
        assert after["output"] in {r["output"] for r in three} - {before["output"]}


def test_corruption_refuses_shares_it_cannot_honour(records):
    with pytest.raises(ValueError, match=r"share=1.5 is outside \[0, 1\]"):
        swap_outputs(records, 1.5, seed=0)
    short = [{**records[0], "id": "api-textwrap.x", "output": "Too short."}, records[1]]
    with pytest.raises(ValueError, match="truncate: share=1.0 of 2 records needs 2 outputs it can change, only 1"):
        truncate_outputs(short, 1.0, seed=0)


def test_write_jsonl_round_trips_atomically(records, tmp_path):
    rows = [*records[:5], {**records[0], "id": "api-x.y", "output": "Ünïcode \u2028 line separator."}]
    path = tmp_path / "out" / "train.jsonl"
    write_jsonl(rows, path)
    text = path.read_text(encoding="utf-8")
    # splitlines also splits at U+2028: a raw one in the file would break a line-splitting reader
    assert text.endswith("\n") and len(text.splitlines()) == len(rows)
    assert [json.loads(line) for line in text.splitlines()] == rows
    assert [p.name for p in path.parent.iterdir()] == ["train.jsonl"]
