"""Report language: catalogue matching, markdown cells, captions and plot labels."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import nbformat
import pandas as pd
import pytest

from crm_analytics import config, i18n, plots, report

TABLE = i18n.compile_catalogue({
    "Rows per table": "各表行数",
    "better": "更好",
    "**{n} rows** read from {k} sources.": "从 {k} 个数据源读取 **{n} 行**。",
    "The chosen model is {verdict} than seasonal naive.": "所选模型比季节性朴素法{verdict}。",
    "Every row is accounted for.": "每一行都有着落。",
})  # fmt: skip


def test_exact_placeholder_and_sentence_matching():
    assert i18n.translate("Rows  per\ntable", "zh", TABLE) == "各表行数"  # white space collapsed
    assert (
        i18n.translate("**1,234 rows** read from 6 sources.", "zh", TABLE)
        == "从 6 个数据源读取 **1,234 行**。"
    )
    # a captured value that is itself an entry is translated too
    assert (
        i18n.translate("The chosen model is better than seasonal naive.", "zh", TABLE)
        == "所选模型比季节性朴素法更好。"
    )
    # a paragraph is matched sentence by sentence; an unknown sentence stays English
    got = i18n.translate(
        "**5 rows** read from 2 sources. Every row is accounted for. Something new.", "zh", TABLE
    )
    assert got == "从 2 个数据源读取 **5 行**。每一行都有着落。Something new."
    assert i18n.translate("Rows per table", "en", TABLE) == "Rows per table"


def test_catalogue_rejects_unknown_placeholders_and_languages():
    with pytest.raises(ValueError, match=r"unknown placeholders \['m'\]"):
        i18n.compile_catalogue({"{n} rows": "{m} 行"})
    with pytest.raises(ValueError, match="report_language must be one of en, zh"):
        i18n.translate("Rows per table", "fr")


def test_shipped_catalogue_loads_and_every_notebook_heading_and_paragraph_is_translated():
    exact, patterns = i18n.catalogue("zh")
    assert len(exact) + len(patterns) > 100
    left = []
    for nb_name in config.NOTEBOOKS.values():
        nb = nbformat.read(config.project_root() / "notebooks" / nb_name, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "markdown":
                out = i18n.translate_markdown(cell.source, "zh")
                left += [f"{nb_name}: {p}" for p in out.split("\n\n") if i18n.untranslated(p)]
    assert not left, left


def test_captions_and_plot_labels_follow_the_report_language():
    frame = pd.DataFrame({"table": ["orders"], "rows": [3], "sources": [1]})
    try:
        report.set_language("zh")
        styler = report.table(frame, "Sources per table")
        assert i18n.untranslated(styler.caption) is False and "Sources" not in styler.caption
        ax = plots.plot_source_rows(frame)
        assert not i18n.untranslated(ax.get_title()), ax.get_title()
        report.set_language("en")
        ax = plots.plot_source_rows(frame)
        assert ax.get_title() == "Rows read per table"
    finally:
        report.set_language("en")
        plt.close("all")


def test_markdown_cells_of_an_executed_notebook_are_translated_but_html_cells_are_not():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("## Rows per table"),
                nbformat.v4.new_markdown_cell('<div id="executive-summary">Executive summary</div>')]  # fmt: skip
    assert i18n.translate_notebook(nb, "zh") == 1
    assert nb.cells[0].source.startswith("## ") and not i18n.untranslated(nb.cells[0].source)
    assert nb.cells[1].source == '<div id="executive-summary">Executive summary</div>'


def test_catalogue_has_no_duplicate_keys():
    """A repeated key would silently replace the earlier translation."""
    import yaml

    keys = []

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        keys.extend(loader.construct_object(k) for k, _ in node.value)
        return yaml.SafeLoader.construct_mapping(loader, node, deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    path = config.project_root() / "lib" / "crm_analytics" / "resources" / "zh.yaml"
    yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)
    assert len(keys) > 100 and len(keys) == len(set(keys)), sorted(
        k for k in set(keys) if keys.count(k) > 1
    )


def test_churn_feature_labels_are_translated():
    from crm_analytics import churn

    labels = [*churn.FEATURE_LABELS.values(), churn.feature_label("orders_30d"), churn.feature_label("spend_90d"),
              churn.feature_label("share_app"), churn.feature_label("orders_trend_180d")]  # fmt: skip
    assert [t for t in labels if i18n.untranslated(i18n.translate(t, "zh"))] == []


def test_budget_curve_texts_are_all_translated():
    targets = pd.DataFrame({"contacted": [1, 2, 3], "cumulative_value": [5.0, 8.0, 7.0]})
    try:
        report.set_language("zh")
        ax = plots.plot_budget_curve(targets)
        texts = [
            ax.get_title(),
            ax.get_xlabel(),
            ax.get_ylabel(),
            *(t.get_text() for t in ax.texts),
        ]
        assert [t for t in texts if i18n.untranslated(t)] == []
        assert "联系 2 位" in ax.texts[0].get_text()  # the best number of contacts, filled in
    finally:
        report.set_language("en")
        plt.close("all")
