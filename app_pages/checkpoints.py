"""Checkpoints: every checkpoint with its metadata; download one (self-contained: weights, tokenizer and
configuration); upload one (checked without unpickling anything) and open it in Compare; delete with a
confirmation."""

import pandas as pd
import streamlit as st

from app_pages import ui
from seqgan import studio

st.title("Checkpoints")
st.caption("mle.pt: the generator after MLE pre-training (the baseline). seqgan.pt: after adversarial "
           "training. latest.pt: everything needed to resume (networks, optimizers, random state).")

with st.expander("Upload a checkpoint", icon=":material/upload:"):
    upload = st.file_uploader("SeqGAN Studio checkpoint (.pt)", type=["pt"])
    if upload is not None and st.session_state.get("imported_upload") != upload.file_id:
        with ui.reported(upload.name):
            info = studio.import_checkpoint(upload.name, upload.getvalue())
            st.session_state["imported_upload"] = upload.file_id
            st.session_state["checkpoint"] = st.session_state["checkpoint-choice"] = info.id
            st.success(f"{upload.name}: a {info.kind} checkpoint ({info.role}); kept as {info.path.name}.",
                       icon=":material/check:")

items = studio.list_checkpoints()
if not items:
    st.info("No checkpoints yet: train a run on the Train page or upload a checkpoint above.")
    st.stop()

st.dataframe(pd.DataFrame([{
    "checkpoint": c.id, "kind": c.kind, "role": c.role, "size": studio.human_size(c.size),
    "modified": pd.Timestamp(c.modified, unit="s", tz="UTC").tz_convert(None), "model": c.detail,
    "read-only": c.builtin} for c in items]), hide_index=True,
    column_config={"modified": st.column_config.DatetimeColumn("modified (UTC)", format="YYYY-MM-DD HH:mm")})

ids = [c.id for c in items]
chosen = ui.sticky_select(st, "Checkpoint", ids, key="checkpoint-choice", fallback=st.session_state.get("checkpoint"))
st.session_state["checkpoint"] = chosen  # kept across pages (a widget's own state is dropped on a page switch)
info = next(c for c in items if c.id == chosen)

actions = st.container(horizontal=True)
with ui.reported(info.id):
    actions.download_button(f"Download {studio.download_name(info)}", info.path.read_bytes(),
                            file_name=studio.download_name(info), mime="application/octet-stream",
                            icon=":material/download:", on_click="ignore", type="primary")
if actions.button("Open in Compare", icon=":material/compare:"):
    st.session_state["compare_source"] = info.run_id or info.id
    st.switch_page("app_pages/compare.py")
training = studio.still_training(info)
if info.deletable:
    why = "Its run is still training: stop it on the Train page first." if training else None
    if actions.button("Delete checkpoint…", icon=":material/delete:", disabled=training, help=why):
        st.session_state["confirm_delete"] = ("checkpoint", info.id)
    if info.run_id is not None and actions.button("Delete the whole run…", icon=":material/delete_forever:",
                                                  disabled=training, help=why):
        st.session_state["confirm_delete"] = ("run", info.run_id)
else:
    st.caption("A built-in demo: read-only.")

pending = st.session_state.get("confirm_delete")
if pending not in (None, ("checkpoint", info.id), ("run", info.run_id)):
    st.session_state.pop("confirm_delete")  # asked about another selection: never confirm that one from here
    pending = None
if pending:
    what, target = pending

    def delete() -> None:
        studio.delete_run(target) if what == "run" else studio.delete_checkpoint(target)
        st.session_state.pop("checkpoint", None)

    loses = "" if what == "run" else studio.deletion_loses(target)
    ui.confirm_deletion("confirm_delete", target,
                        f"Delete {'the run' if what == 'run' else 'the checkpoint'} **{target}**? {loses}", delete)
