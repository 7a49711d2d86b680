"""The explorers' shared ipywidgets plumbing: controls, output records, the message panel.

`Explorer` is what every explorer shares: the message panel (CSS class ``wb-message``), a mute flag
so that filling several controls redraws once, and the guarded refresh (a `WorkbenchError` goes
to the panel as its message, never a traceback, and the last result stays). Outputs are written
explicitly (``out.outputs = (...)``: one sync message, no flicker) rather than with ``with
out:``, which captures nothing outside a kernel. Tables go through `styled`, which HTML-escapes
every cell and index label: keys, file names and messages come from a stranger's checkpoint.
Every part carries a ``wb-*`` CSS class for the browser tests.

Imports ipywidgets and IPython's display machinery. Lazy imports: tables (pandas) inside `styled`.
"""

from __future__ import annotations

import asyncio
import html
from contextlib import contextmanager
from typing import Any

from ..colors import HIGHLIGHT_COLOR
from ..errors import WorkbenchError, missing_extra

try:
    import ipywidgets as W
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.display import HTML
except ImportError as e:  # the explorers need the lab extra; the plain functions do not
    raise missing_extra(e, "lab", "workbench.widgets") from None

__all__ = [
    "Explorer",
    "mime",
    "note",
    "styled",
    "table_outputs",
    "MAX_TABLE_ROWS",
    "counted",
    "show_message",
    "show_bug",
    "with_class",
    "text_box",
    "dropdown",
    "set_options",
    "after_display",
]


def mime(obj) -> dict:
    """An output record for ``Output.outputs`` from any displayable object (no kernel needed)."""
    data, md = InteractiveShell.instance().display_formatter.format(obj)
    return {"output_type": "display_data", "data": data, "metadata": md}


def note(text: str) -> dict:
    """An output record of a short italic note (instead of a table with no rows)."""
    return mime(HTML(f"<i>{html.escape(text)}</i>"))


def styled(df, columns, highlight_row: int | None = None):
    """The shown columns of a table as `tables.style_by_rank` styles them (rank columns in the
    ranks' colours, bytes in human units with the exact count on hover, every cell and label
    HTML-escaped: pandas' Styler does not escape by default), one row lit."""
    from ..tables import style_by_rank

    styler = style_by_rank(df[[c for c in columns if c in df.columns]].reset_index(drop=True))
    if highlight_row is not None:
        styler = styler.apply(
            lambda row: [
                f"background-color: {HIGHLIGHT_COLOR}" if row.name == highlight_row else ""
                for _ in row
            ],
            axis=1,
        )
    # (no second .format: it would replace style_by_rank's byte formatter)
    return styler.hide(axis="index").set_properties(**{"text-align": "left"})


# Rows a panel renders as HTML: pandas' Styler takes ~1 ms a row, so a 16,384-rank I/O table
# was 10 s and megabytes of HTML before the first picture (1000 rows: 1.5 s a table); 200 rows
# fill a panel's scroll many times over and the DataFrame keeps every row.
MAX_TABLE_ROWS = 200


def table_outputs(df, columns, where: str, limit: int = MAX_TABLE_ROWS) -> tuple[dict, ...]:
    """``Output.outputs`` for a table: its first ``limit`` rows `styled`, then a note saying how
    many rows there are and ``where`` the whole table is (e.g. ``"explorer.plan.io"``)."""
    if len(df) <= limit:
        return (mime(styled(df, columns)),)
    return (
        mime(styled(df.iloc[:limit], columns)),
        note(f"the first {limit:,} of {len(df):,} rows; {where} holds them all"),
    )


def after_display(fn, *args) -> None:
    """Run ``fn(*args)`` once the current cell has finished, when a kernel's event loop runs
    it (a widget built in the cell is shown first, and parts it fills later arrive as widget
    updates); at once anywhere else (a script, a test)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        fn(*args)
        return
    loop.call_soon(fn, *args)


def counted(n: int, noun: str) -> str:
    """``3, "problem"`` -> ``"3 problems"``."""
    return f"{n} {noun}{'s' * (n != 1)}"


def show_message(panel: W.HTML, err: Exception | str | None) -> None:
    """The message panel shows ``err``'s text (escaped), or nothing."""
    panel.value = (
        ""
        if err is None
        else (f"<div style='color:#b00020;white-space:pre-wrap'>{html.escape(str(err))}</div>")
    )


def show_bug(panel: W.HTML, err: Exception) -> None:
    """The message panel says ``err`` is a bug, not bad input (a browser shows a callback's
    exception only in the log console)."""
    show_message(panel, f"internal error, please report: {type(err).__name__}: {err}")


def with_class(widget: W.Widget, name: str) -> W.Widget:
    """``widget`` with the CSS class ``name`` (browser tests select on them)."""
    widget.add_class(name)
    return widget


def text_box(value: str, description: str, css: str) -> W.Text:
    """A text control that fires on Enter / blur."""
    # continuous_update=False: a redraw on Enter / blur, not on every keystroke
    return with_class(
        W.Text(
            value=value,
            description=description,
            continuous_update=False,
            layout=W.Layout(width="17em"),
            style={"description_width": "8.5em"},
        ),
        css,
    )


def dropdown(options, value, description: str, css: str, width: str = "17em") -> W.Dropdown:
    """A dropdown of the explorers' width."""
    return with_class(
        W.Dropdown(
            options=options,
            value=value,
            description=description,
            layout=W.Layout(width=width),
            style={"description_width": "8.5em"},
        ),
        css,
    )


class Explorer:
    """What every explorer shares: the message panel, a mute flag so that filling several
    controls redraws once, and the guarded refresh (a `WorkbenchError` goes to the panel and the
    last result stays)."""

    result: Any = None
    widget: W.Widget

    def __init__(self):
        self.message = with_class(W.HTML(value=""), "wb-message")
        self.muted = False

    @contextmanager
    def quiet(self):
        """Set several controls without a redraw per control (the caller refreshes once)."""
        self.muted = True
        try:
            yield
        finally:
            self.muted = False

    def watch(self, *controls: W.Widget) -> None:
        for c in controls:
            c.observe(self._on_change, names="value")

    def _on_change(self, change=None) -> None:
        if not self.muted:
            self.refresh()

    def refresh(self):
        """Recompute from the controls and show the result, or the error in the message panel
        (the outputs and ``.result`` keep the last good result). Returns ``.result``."""
        try:
            result = self._compute()
        except WorkbenchError as err:
            show_message(self.message, err)
            return self.result
        except Exception as err:
            show_bug(self.message, err)  # then to the log and to tests
            raise
        show_message(self.message, None)
        self.result = result
        self._show(result)
        return result

    def _compute(self):
        raise NotImplementedError

    def _show(self, result) -> None:
        raise NotImplementedError

    def _repr_mimebundle_(self, **kw):
        return self.widget._repr_mimebundle_(**kw)


def set_options(dropdown: W.Dropdown, options: list, value) -> None:
    """New options for a dropdown, keeping ``value`` when it is still offered."""
    if list(dropdown.options) != options:
        dropdown.options = options
    dropdown.value = value if value in options else options[0]
