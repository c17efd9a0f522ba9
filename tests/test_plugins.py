"""Plugin system: every hookspec documented and exercised; third-party plugins load from entry points."""

import inspect
import textwrap

import pytest

from lm_diff.categorize.taxonomy import Category, get_taxonomy
from lm_diff.plugins import hookspecs
from lm_diff.plugins import manager as plugins

HOOKS = sorted(n for n, f in vars(hookspecs).items() if n.startswith("lm_diff_") and callable(f))


@pytest.fixture
def fresh_pm(monkeypatch):
    plugins.reset_plugin_manager()
    yield
    plugins.reset_plugin_manager()


def test_every_hookspec_documented():
    assert HOOKS, "no hookspecs found"
    for name in HOOKS:
        doc = inspect.getdoc(getattr(hookspecs, name))
        assert doc and len(doc.splitlines()) == 1, f"{name} needs a one-line docstring"


def test_every_hookspec_has_a_test():
    """Each hook has a test in tests/test_hook_impls.py named test_hook_<name>."""
    import test_hook_impls

    for name in HOOKS:
        assert hasattr(test_hook_impls, f"test_hook_{name}"), f"hook {name} has no test"


def _fake_dist(tmp_path, name="lm_diff_fake_plugin"):
    mod = tmp_path / f"{name}.py"
    mod.write_text(
        textwrap.dedent(
            """
            from lm_diff.plugins.hookspecs import hookimpl
            from lm_diff.categorize.taxonomy import Category

            @hookimpl
            def lm_diff_taxonomy(config):
                return [Category("poetry", "Writing verse.")]
            """
        )
    )
    dist = tmp_path / f"{name}-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text(f"[lm_diff]\nfake = {name}\n")
    return tmp_path


def test_third_party_plugin_loads_from_entry_point(tmp_path, monkeypatch, fresh_pm):
    monkeypatch.syspath_prepend(str(_fake_dist(tmp_path)))
    monkeypatch.delenv("LM_DIFF_LOAD_PLUGINS", raising=False)
    names = [c.name for c in get_taxonomy()]
    assert "poetry" in names and "safety" in names
    row = next(r for r in plugins.list_plugins() if r["name"] == "fake")
    assert row["hooks"] == ["lm_diff_taxonomy"] and not row["builtin"] and row["version"] == "1.2.3"


def test_load_plugins_env_restricts(tmp_path, monkeypatch, fresh_pm):
    monkeypatch.syspath_prepend(str(_fake_dist(tmp_path)))
    monkeypatch.setenv("LM_DIFF_LOAD_PLUGINS", "")
    names = [c.name for c in get_taxonomy()]
    assert "poetry" not in names and "safety" in names
    plugins.reset_plugin_manager()
    monkeypatch.setenv("LM_DIFF_LOAD_PLUGINS", "fake")
    assert "poetry" in [c.name for c in get_taxonomy()]


def test_builtin_taxonomy_has_seed_categories():
    names = [c.name for c in get_taxonomy()]
    for expected in ["safety", "multilingual", "instruction_following", "template_following", "factual_verification",
                     "hallucination", "self_reference", "query_classification", "structured_output", "code", "math"]:
        assert expected in names
    assert all(isinstance(c, Category) and c.description for c in get_taxonomy())


def test_hook_result_mergers_first_plugin_wins():
    from lm_diff.plugins.manager import merged_by_name, merged_mapping

    assert merged_mapping([{"a": 1, 2: "x"}, None, {"a": 9, "b": 3}]) == {"a": 1, "2": "x", "b": 3}
    first, second = Category("code", "first"), Category("code", "second")
    assert merged_by_name([[first], None, [second, Category("math", "m")]]) == [first, Category("math", "m")]


def test_every_default_plugin_is_registered():
    from lm_diff.plugins.manager import DEFAULT_PLUGINS, list_plugins

    rows = {r["name"]: r for r in list_plugins()}
    assert all(rows[name]["builtin"] and rows[name]["hooks"] for name in DEFAULT_PLUGINS)
