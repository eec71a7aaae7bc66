"""Widgets more than one page uses: a melody (player, piano roll, MIDI download), verse, charts, tables, errors."""

from __future__ import annotations

import re
from contextlib import contextmanager

import streamlit as st

from seqgan import studio
from seqgan.errors import SeqGANError


def melody(events, *, key: str, title: str = "", midi_name: str = "melody.mid") -> None:
    """An audio player, the piano roll and a MIDI download of one melody."""
    media = studio.melody_media(events, title)  # cached: reruns do not render again
    st.audio(media.wav, format="audio/wav")
    st.image(media.png, width="stretch")
    st.download_button("Download MIDI", media.midi, file_name=midi_name, mime="audio/midi", key=key,
                       on_click="ignore", icon=":material/download:")


def plain(text: str) -> str:
    """Text shown as it is inside markdown (generated lines may hold *, #, _ and the like)."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$])", r"\\\1", text)


def verse(lines, numbered: bool = False) -> None:
    """Lines of text, as a quotation or a numbered list."""
    if numbered:
        st.markdown("\n".join(f"{i + 1}. {plain(line)}" for i, line in enumerate(lines)))
    else:
        st.markdown("\n".join(f"> {plain(line)}  " for line in lines))


def line_chart(frame, x_label: str = "unit of the schedule (-1: before training)", height: int = 260) -> None:
    """Curves of a metrics frame (index: unit), with a point at every measurement (one point is still seen)."""
    import altair as alt

    data = frame.reset_index().melt(id_vars=frame.index.name or "index", var_name="metric").dropna()
    x = frame.index.name or "index"
    chart = alt.Chart(data, height=height).mark_line(point=True).encode(
        x=alt.X(f"{x}:Q", title=x_label, axis=alt.Axis(format="d", tickMinStep=1)),
        y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False), axis=alt.Axis(format="~g")),
        color=alt.Color("metric:N", legend=alt.Legend(orient="bottom", title=None)),
        tooltip=[alt.Tooltip(f"{x}:Q", title="unit"), "metric:N", alt.Tooltip("value:Q", format=".4g")])
    st.altair_chart(chart, width="stretch")


def metric_table(table) -> None:
    """A table of metrics (rows) by model (columns) with four decimals."""
    st.dataframe(table, column_config={c: st.column_config.NumberColumn(format="%.4f")
                                       for c in table.columns if c != "better"})


def show_error(exc: BaseException, what: str = "") -> None:
    """Our errors as they are (they name the file and the problem); anything else with its type."""
    if isinstance(exc, SeqGANError):
        st.error(str(exc), icon=":material/error:")
    else:
        st.error(f"{what + ': ' if what else ''}unexpected problem ({type(exc).__name__}: {exc})",
                 icon=":material/error:")


@contextmanager
def reported(what: str = ""):
    """Show a problem as a message instead of a crashed page (see ``show_error``)."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001  (a page must not crash on bad input)
        show_error(exc, what)


def sticky_select(container, label: str, options: list, *, key: str, sent=None, fallback=None, **kwargs):
    """A selectbox whose every pick takes effect and stays until the user changes it.

    Its state lives under ``key`` and no ``index`` is passed: a selectbox whose ``index`` changes from one rerun
    to the next is a new widget to Streamlit, which then drops the user's pick. ``sent``: a choice made elsewhere
    (an upload, a button on another page), taken when it is one of the options. ``fallback``: the choice when
    the widget has none among the options (first visit, back from another page, its pick deleted)."""
    if sent in options:
        st.session_state[key] = sent
    elif st.session_state.get(key) not in options:
        st.session_state[key] = fallback if fallback in options else options[0]
    return container.selectbox(label, options, key=key, **kwargs)


def confirm_deletion(request_key: str, target: str, message: str, delete, cancel_scope: str = "app") -> None:
    """The warning that asks to confirm a deletion requested under ``request_key`` in the session state: "Yes,
    delete" calls ``delete()`` and redraws the page, "Cancel" drops the request and redraws ``cancel_scope``."""
    with st.container(border=True):
        st.warning(f"{message} This cannot be undone.", icon=":material/warning:")
        yes, no = st.columns(2)
        if yes.button("Yes, delete", type="primary", key=f"{request_key}-yes"):
            st.session_state.pop(request_key)
            with reported(target):
                delete()
                st.toast(f"Deleted {target}.")
                st.rerun()
        if no.button("Cancel", key=f"{request_key}-no"):
            st.session_state.pop(request_key)
            st.rerun(scope=cancel_scope)
