"""The focused image of the Review grid, in a panel beside it: the image, its label and suggestion, and one-key
decisions (keep, remove, accept the suggested label, undo, pick) with previous / next, which cross page boundaries.
The keys are a small script that presses the panel's labelled buttons (Streamlit has no key handler of its own)."""

from __future__ import annotations

import json
from typing import Any

import streamlit as st

from app.decide import decide, decision_badge, picked, set_picks, suggested_label
from app.evidence import label_text, picture
from auditor.store.database import Store

FOCUS_IMAGE = 200
# key -> (button key, what it does); the same table drives the script and the legend on the page.
SHORTCUTS = {"k": ("focus_keep", "keep"), "x": ("focus_remove", "remove"),
             "a": ("focus_accept", "accept the suggested label"), "u": ("focus_undo", "undo"),
             "p": ("focus_pick", "pick / unpick"), "j": ("focus_next", "next image"),
             "ArrowRight": ("focus_next", "next image"), "h": ("focus_prev", "previous image"),
             "ArrowLeft": ("focus_prev", "previous image")}
KEY_NAMES = {"ArrowRight": "→", "ArrowLeft": "←"}
# Presses the button of a key pressed outside a text field; replaced (not added again) on every run of the element.
_SCRIPT = """<script>
(() => {
  const keys = %s;
  const doc = window.parent ? window.parent.document : document;
  if (doc.__memauditKeys) doc.removeEventListener('keydown', doc.__memauditKeys);
  doc.__memauditKeys = (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    const target = event.target;
    const typing = target && (target.isContentEditable || ['TEXTAREA', 'SELECT'].includes(target.tagName)
                              || (target.tagName === 'INPUT' && !['checkbox', 'radio'].includes(target.type)));
    if (typing) return;
    const key = keys[event.key];
    const button = key && doc.querySelector('.st-key-' + key + ' button');
    if (!button || button.disabled) return;
    event.preventDefault();
    button.click();
  };
  doc.addEventListener('keydown', doc.__memauditKeys);
})();
</script>"""


def shortcuts() -> None:
    """The keyboard script (no visible element)."""
    keys = json.dumps({key: button for key, (button, _) in SHORTCUTS.items()})
    st.html(_SCRIPT % keys, unsafe_allow_javascript=True)


def legend() -> str:
    """The shortcuts as one line, e.g. 'k keep · x remove · …'."""
    seen: dict[str, list[str]] = {}
    for key, (_, what) in SHORTCUTS.items():
        seen.setdefault(what, []).append(KEY_NAMES.get(key, key))
    return " · ".join(f"**{' / '.join(keys)}** {what}" for what, keys in seen.items())


def _step(ids: list[str], current: str, step: int, pages: int) -> None:
    """Focus the image `step` (±1) away from `current`; past either end of the page, turn the page."""
    state = st.session_state
    index = ids.index(current) + step if current in ids else 0
    if 0 <= index < len(ids):
        state["evidence"] = ids[index]
        return
    page = state.get("page", 1) + step
    if 1 <= page <= pages:
        state["page"], state["evidence"] = page, None
        state["focus_at"] = "first" if step > 0 else "last"


def _decide(store: Store, ids: list[str], sample_id: str, action: str, label: str | None, pages: int) -> None:
    """Record `action` on the focused image alone (no note: it would sign a decision it was not written for); once
    stored, move on to the next image, as a reviewer working down the queue expects (not after an undo)."""
    if decide(store, [sample_id], action, label, None) and action != "undo":
        _step(ids, sample_id, 1, pages)


def _toggle_pick(sample_id: str) -> None:
    set_picks([sample_id], sample_id not in picked())


def focused_id(ids: list[str], rows: dict[str, dict[str, Any]], has_flag) -> str:
    """The focused image of the page: the one in the session when it is on the page, else the first or last one
    (after previous / next turned the page), else the first flagged one."""
    state = st.session_state
    where = state.pop("focus_at", None)
    if state.get("evidence") not in rows:
        flagged = [i for i in ids if has_flag(rows[i])]
        state["evidence"] = ids[-1] if where == "last" else ids[0] if where == "first" else (flagged or ids)[0]
    return state["evidence"]


def panel(store: Store, row: dict[str, Any], ids: list[str], pages: int) -> None:
    """The focused image with its label, prediction and suggestion, the decision buttons and the key legend."""
    sample_id = row["sample_id"]
    picture(row["path"], sample_id, FOCUS_IMAGE, row["file_hash"])
    suggested = suggested_label(row)
    st.markdown(f"label **{label_text(row['label'])}**, predicted {label_text(row['pred_label'])}"
                + ("" if row["p_pred"] is None or row["p_pred"] != row["p_pred"] else f" ({row['p_pred']:.2f})")
                + f"  \nsuggested: **{label_text(suggested)}**"
                + f"  \n{decision_badge(row['decision'], row['decision_label']) or ':gray[not reviewed]'}")
    prev, nxt = st.columns(2)
    prev.button("← Previous", key="focus_prev", on_click=_step, args=(ids, sample_id, -1, pages), width="stretch")
    nxt.button("Next →", key="focus_next", on_click=_step, args=(ids, sample_id, 1, pages), width="stretch")
    keep, remove = st.columns(2)
    keep.button("Keep (k)", key="focus_keep", on_click=_decide, width="stretch",
                args=(store, ids, sample_id, "keep", None, pages))
    remove.button("Remove (x)", key="focus_remove", on_click=_decide, width="stretch",
                  args=(store, ids, sample_id, "remove", None, pages))
    st.button(f"Accept {label_text(suggested)} (a)" if suggested else "No suggested label", key="focus_accept",
              on_click=_decide, disabled=suggested is None, width="stretch",
              args=(store, ids, sample_id, "relabel", suggested, pages))
    undo, pick = st.columns(2)
    undo.button("Undo (u)", key="focus_undo", on_click=_decide, width="stretch",
                disabled=row["decision"] is None or row["decision"] != row["decision"],
                args=(store, ids, sample_id, "undo", None, pages))
    pick.button("Unpick (p)" if sample_id in picked() else "Pick (p)", key="focus_pick", on_click=_toggle_pick,
                args=(sample_id,), width="stretch")
    st.caption("Keys: " + legend() + " · **shift+click** a pick box: pick a range")
