"""Train: start a run in the background (presets and every option), watch it (phase, progress and ETA, losses,
discriminator accuracy, quality and diversity curves), stop and resume it. Runs live on disk, so they survive a
refresh of the browser and a restart of the app; one runs at a time per GPU (or per machine without one)."""

import pandas as pd
import streamlit as st

from app_pages import ui
from seqgan import studio
from seqgan.errors import SeqGANError

st.title("Train")

runs = studio.list_runs(include_demos=False)

# ----- start a run -------------------------------------------------------------------------------------------
with st.expander("Start a new run", expanded=not runs):
    choices = studio.corpus_choices()
    ids = [c.id for c in choices]
    wanted = st.session_state.get("train_corpus")
    if wanted is not None and wanted not in ids:  # deleted since it was chosen: the box shows another one
        st.session_state["train_corpus_gone"] = wanted  # until the user picks a corpus in the box
    corpus_id = st.selectbox("Corpus", ids, index=ids.index(wanted) if wanted in ids else 0,
                             format_func=lambda i: next(c.label for c in choices if c.id == i),
                             on_change=lambda: st.session_state.pop("train_corpus_gone", None))
    st.session_state["train_corpus"] = corpus_id
    vanished = st.session_state.get("train_corpus_gone")
    if vanished:
        st.warning(f"The corpus chosen before ({vanished}) is no longer there; choose the corpus to train on.",
                   icon=":material/warning:")
    kind = next(c.kind for c in choices if c.id == corpus_id)
    preset = st.radio("Preset", list(studio.PRESETS), format_func=lambda p: studio.PRESETS[p].label,
                      horizontal=True)
    st.caption(studio.PRESETS[preset].description)
    left, middle, right = st.columns(3)
    threads = left.number_input("CPU threads", min_value=1, max_value=studio.max_threads(),
                                value=studio.default_threads(),
                                help="torch threads of the job (SEQGAN_THREADS). On a small machine 1 is often "
                                     "fastest: threads that wait for a busy core slow everything down.")
    device = middle.selectbox("Device", ["auto", "cpu", "cuda"], help="auto: a free GPU when there is one")
    # the Data page's tokenizer and length settings, when it read this corpus
    settings = st.session_state.get("corpus_settings") or {}
    settings = settings if settings.get("id") == corpus_id else {}
    tokenizers = ["auto", "unigram", "bpe", "char"]
    tokenizer_model = right.selectbox("Text tokenizer", tokenizers, disabled=kind != "text",
                                      index=tokenizers.index(settings.get("tokenizer_model") or "auto"))
    options = {}
    with st.expander("Advanced options (the training configuration)"):
        specs = studio.option_specs(preset, kind, settings)
        for group in studio.OPTION_GROUPS:
            st.markdown(f"**{group}**")
            cols = st.columns(4)
            for index, spec in enumerate(s for s in specs if s.group == group):
                col, key = cols[index % 4], f"opt-{preset}-{kind}-{spec.name}" + (f"-{corpus_id}" * bool(settings))
                label = spec.name.replace("_", " ")
                if spec.choices:
                    options[spec.name] = col.selectbox(label, spec.choices, key=key, help=spec.help or None)
                elif spec.type == "list":
                    text = col.text_input(label, " ".join(map(str, spec.default)), key=key, help=spec.help or None,
                                          placeholder="the paper's")
                    options[spec.name] = text
                elif spec.type == "int":
                    options[spec.name] = col.number_input(label, value=spec.default, step=1, key=key,
                                                          help=spec.help or None, placeholder="auto")
                else:
                    options[spec.name] = col.number_input(label, value=spec.default, format="%g", key=key,
                                                          help=spec.help or None, placeholder="auto")
    if st.button("Start training", type="primary", icon=":material/play_arrow:") and not vanished:
        with ui.reported("start"):
            for name in ("d_filter_sizes", "d_num_filters"):
                options[name] = studio.parse_int_list(options[name], name)
            run_id = studio.start_training(corpus_id, preset, options, threads=int(threads), device=device,
                                           tokenizer_model=None if tokenizer_model == "auto" else tokenizer_model)
            st.session_state["train_run"] = st.session_state["watch-run"] = run_id
            st.query_params["run"] = run_id
            st.success(f"Started run {run_id}.", icon=":material/check:")

# ----- the runs ----------------------------------------------------------------------------------------------
runs = studio.list_runs(include_demos=False)  # again: a run may have started just now
if not runs:
    st.info("No runs yet: start one above. (The built-in demo runs are on the Compare page.)")
    st.stop()

st.subheader("Runs")


@st.fragment(run_every=5 if any(info.state.active for info in runs) else None)
def runs_table() -> None:
    """Every run's state and progress, refreshed while any of them is active."""
    table = []
    for info in studio.list_runs(include_demos=False):
        progress = studio.run_progress(info)
        table.append({"run": info.id, "corpus": info.corpus, "preset": info.meta.get("preset", ""),
                      "state": info.state.state, "progress": progress.fraction,
                      "started": (pd.Timestamp(info.created, unit="s", tz="UTC").tz_convert(None)
                                  if info.created else None)})
    st.dataframe(pd.DataFrame(table), hide_index=True, column_config={
        "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
        "started": st.column_config.DatetimeColumn("started (UTC)", format="YYYY-MM-DD HH:mm:ss")})


runs_table()

ids = [info.id for info in runs]
wanted = st.query_params.get("run") or st.session_state.get("train_run")
active = [info.id for info in runs if info.state.active]
run_id = ui.sticky_select(st, "Watch run", ids, key="watch-run",
                          fallback=wanted if wanted in ids else (active[0] if active else ids[0]))
st.query_params["run"] = run_id
st.session_state["train_run"] = run_id
selected = studio.get_run(run_id)


@st.fragment(run_every=2 if selected.state.active else None)
def monitor(run_id: str, was_active: bool) -> None:
    try:
        info = studio.get_run(run_id)
    except SeqGANError as exc:
        st.error(str(exc))
        return
    state = info.state
    if was_active and not state.active:
        st.rerun()  # the job ended: redraw the whole page (buttons, table)
    progress = studio.run_progress(info)
    st.markdown(f"**{info.id}** · {info.corpus} · "
                f"state **{state.state}**" + (f" on {', '.join(state.slots)}" if state.slots else ""))
    st.progress(progress.fraction, text=studio.progress_line(progress))
    if state.state == "preparing":
        st.info(f"Preparing: {state.message}", icon=":material/hourglass_top:")
    elif state.state == "stopping":
        st.warning(f"Stopping: {state.message}.", icon=":material/hourglass_bottom:")
    elif state.state == "failed":
        st.error(f"The run failed: {state.message}", icon=":material/error:")
    elif state.state == "interrupted":
        st.warning(f"Interrupted: {state.message}.", icon=":material/warning:")

    buttons = st.container(horizontal=True)
    if state.state in ("preparing", "running"):
        if buttons.button("Stop", icon=":material/stop:", key="stop",
                          help="SIGTERM: the unit in progress is finished and checkpointed; resume continues"):
            with ui.reported("stop"):
                studio.stop_training(info.id)
                st.rerun(scope="fragment")
    if state.state == "stopping":
        if buttons.button("Kill now", icon=":material/cancel:", key="kill",
                          help="SIGKILL: resume continues from the last checkpoint"):
            with ui.reported("kill"):
                studio.stop_training(info.id, force=True)
                st.rerun(scope="fragment")
    if info.resumable:
        again = "latest" not in info.checkpoints()
        if buttons.button("Start again" if again else "Resume", icon=":material/play_arrow:", key="resume",
                          type="primary", help="no latest.pt: the run starts again from the beginning" if again
                          else "continues from latest.pt, exactly where the run stopped"):
            with ui.reported("resume"):
                studio.resume_training(info.id)
                st.rerun()
    if info.checkpoints() and buttons.button("Compare its models", icon=":material/compare:", key="to-compare"):
        st.session_state["compare_source"] = info.id
        st.switch_page("app_pages/compare.py")
    if not state.active and buttons.button("Delete run…", icon=":material/delete_forever:", key="delete-run"):
        st.session_state["confirm_delete_run"] = info.id
    if st.session_state.get("confirm_delete_run") == info.id:
        ui.confirm_deletion("confirm_delete_run", info.id, f"Delete the run **{info.id}** with its checkpoints?",
                            lambda: studio.delete_run(info.id), cancel_scope="fragment")

    frames = studio.metric_frames(info)
    numbers = st.container(horizontal=True)
    for label, value in studio.latest_metrics(frames):
        numbers.metric(label, value, width="content", border=True)
    for section, charts in studio.chart_sections(frames):
        st.subheader(section, divider="gray")
        for row in range(0, len(charts), 2):
            cols = st.columns(2)
            for col, (title, frame) in zip(cols, charts[row:row + 2]):
                with col:
                    st.markdown(f"**{title}**")
                    ui.line_chart(frame)
    with st.expander("Output of the job"):
        st.code("\n".join(info.run.tail(info.run.output, 30)) or "(nothing yet)", language=None)


monitor(run_id, selected.state.active)
