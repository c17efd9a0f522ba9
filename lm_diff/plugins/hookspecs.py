"""Extension points of lm_diff (pluggy hookspecs).

Built-in behaviour is registered through these same hooks (the modules in ``plugins.manager.DEFAULT_PLUGINS``);
third-party plugins are found through the ``lm_diff`` entry-point group. Every hook below is documented and covered by a test.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("lm_diff")
hookimpl = pluggy.HookimplMarker("lm_diff")


@hookspec
def lm_diff_taxonomy(config):
    """Return a list of ``lm_diff.categorize.taxonomy.Category`` to add to the capability taxonomy (config is the RunConfig or None)."""


@hookspec
def lm_diff_grounding_prompts(config, taxonomy, tokenizer):
    """Return labelled prompts ``[{"text", "category"}]`` to ground latents in categories (render chat with ``tokenizer``, which may be None), or None."""


@hookspec
def lm_diff_annotators():
    """Return a mapping of annotator name to a callable ``annotate(latents, examples, taxonomy, config) -> DataFrame``."""


@hookspec(firstresult=True)
def lm_diff_load_model(spec, config):
    """Load the model named by ``spec`` and return ``(model, tokenizer)``, or None if this plugin does not handle it."""


@hookspec
def lm_diff_latent_metrics(table, context):
    """Return a mapping of extra column name to per-latent values to add to the per-latent table."""


@hookspec
def lm_diff_report_writers():
    """Return a mapping of report format name to a callable ``write(report: dict, out_dir: Path) -> Path``."""


@hookspec
def lm_diff_report_sections(report):
    """Return a list of ``{"title", "markdown"}`` sections to append to the report."""


@hookspec
def lm_diff_task_categories():
    """Return a mapping of lm-eval task name to capability category for tasks that do not declare one."""
