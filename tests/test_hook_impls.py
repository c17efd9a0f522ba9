"""One test per hookspec: a third-party plugin implementing the hook changes what the consuming code does.

``tests/test_plugins.py::test_every_hookspec_has_a_test`` checks that every hook in ``lm_diff/hookspecs.py`` has a
``test_hook_<name>`` here.
"""

from __future__ import annotations

import pandas as pd
import pytest

from lm_diff.categorize.taxonomy import Category
from lm_diff.plugins import manager as plugins
from lm_diff.plugins.hookspecs import hookimpl


@pytest.fixture
def register():
    """Register a plugin object on the process-wide manager for one test."""
    pm = plugins.get_plugin_manager()
    added = []

    def _register(obj, name):
        pm.register(obj, name=name)
        added.append(name)
        return obj

    yield _register
    for name in added:
        pm.unregister(name=name)


def test_hook_lm_diff_taxonomy(register):
    from lm_diff.categorize.taxonomy import get_taxonomy

    class P:
        @hookimpl
        def lm_diff_taxonomy(self, config):
            return [Category("poetry", "Writing verse."), Category("safety", "overridden?")]

    register(P(), "t-taxonomy")
    cats = {c.name: c for c in get_taxonomy()}
    assert "poetry" in cats
    # pluggy calls later-registered (third-party) plugins first and the first definition of a name wins,
    # so a plugin can redefine a built-in category
    assert cats["safety"].description == "overridden?"


def test_hook_lm_diff_grounding_prompts(register):
    from lm_diff.categorize.grounding import grounding_prompts

    class P:
        @hookimpl
        def lm_diff_grounding_prompts(self, config, taxonomy):
            return [{"text": "roses are red", "category": "poetry"}]

    register(P(), "t-grounding")
    rows = grounding_prompts(None, [Category("poetry", "Writing verse.")])
    assert {"text": "roses are red", "category": "poetry"} in rows


def test_hook_lm_diff_annotators(register):
    from lm_diff.plugins.manager import hook

    def annotate(latents, examples, taxonomy, config, **_):
        return pd.DataFrame({"latent": latents["latent"], "category": "none", "kept": False})

    class P:
        @hookimpl
        def lm_diff_annotators(self):
            return {"constant": annotate}

    register(P(), "t-annotators")
    merged = {}
    for result in hook().lm_diff_annotators():
        merged.update(result or {})
    assert "llm" in merged and merged["constant"] is annotate


def test_hook_lm_diff_load_model(register):
    from lm_diff.models import load_model

    class Fake:
        def eval(self):
            self.evaluated = True
            return self

    class P:
        @hookimpl(tryfirst=True)
        def lm_diff_load_model(self, spec, config):
            return (Fake(), "tok") if spec.startswith("fake://") else None

    register(P(), "t-load")
    model, tok = load_model("fake://x")
    assert isinstance(model, Fake) and model.evaluated and tok == "tok"


def test_hook_lm_diff_latent_metrics(register):
    from lm_diff.errors import UserError
    from lm_diff.run.analysis import apply_latent_metric_plugins

    class P:
        @hookimpl
        def lm_diff_latent_metrics(self, table, context):
            return {"double_norm": (table["norm_B"] * 2).tolist()}

    register(P(), "t-metrics")
    table = pd.DataFrame({"latent": [0, 1], "norm_B": [1.0, 3.0]})
    out = apply_latent_metric_plugins(table, {})
    assert out["double_norm"].tolist() == [2.0, 6.0]

    class Bad:
        @hookimpl
        def lm_diff_latent_metrics(self, table, context):
            return {"short": [1.0]}

    register(Bad(), "t-metrics-bad")
    with pytest.raises(UserError, match="one per latent"):
        apply_latent_metric_plugins(pd.DataFrame({"latent": [0, 1], "norm_B": [1.0, 3.0]}), {})


def test_hook_lm_diff_report_writers(register, tmp_path):
    from lm_diff.report.build import build_report, write_report

    class P:
        @hookimpl
        def lm_diff_report_writers(self):
            def write(report, out_dir):
                p = out_dir / "report.txt"
                p.write_text(report["schema"])
                return p

            return {"txt": write}

    register(P(), "t-writers")
    paths = write_report(build_report(), tmp_path, ["txt", "json"])
    assert paths["txt"].read_text() == "lm_diff.report/v2"
    assert (tmp_path / "report.json").exists()


def test_hook_lm_diff_report_sections(register):
    from lm_diff.report.build import build_report, to_markdown

    class P:
        @hookimpl
        def lm_diff_report_sections(self, report):
            return [{"title": "House notes", "markdown": "Checked by the eval team."}]

    register(P(), "t-sections")
    report = build_report()
    assert {"title": "House notes", "markdown": "Checked by the eval team."} in report["sections"]
    assert "House notes" in to_markdown(report)


def test_hook_lm_diff_task_categories(register):
    from lm_diff.bench.suites import plugin_task_categories

    class P:
        @hookimpl(tryfirst=True)
        def lm_diff_task_categories(self):
            return {"my_private_eval": "safety", "gsm8k": "code"}

    register(P(), "t-tasks")
    merged = plugin_task_categories()
    assert merged["my_private_eval"] == "safety"
    assert merged["gsm8k"] == "code"  # a third-party plugin overrides the built-in mapping
