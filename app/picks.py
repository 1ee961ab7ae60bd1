"""The Review grid's picks in the browser: a tick, a shift+click range, the focused image's pick key and the pick
count change in the page at once, with no script run; the picks reach the server (app.decide.picked) only with a
press that needs them (Apply, Accept suggested, Pick page, Clear all, a decision on the focused image), and the page
takes over the server's picks whenever the server changed them (app.decide.set_picks)."""

from __future__ import annotations

import streamlit as st

from app.decide import PICK_PREFIX, SYNC_KEY, VERSION_KEY, picked

# Buttons whose press must carry the page's picks to the server (their keys; all in the queue fragment).
SENDS_PICKS = ("decision_apply", "bulk_accept", "bulk_pick_page", "bulk_pick_clear", "focus_keep", "focus_remove",
               "focus_accept", "focus_undo")
PICK_BUTTON = "focus_pick"  # the focused image's pick button (key p): toggled in the page too

# A page's pick box shows the page's state (its input's `checked`, which React can no longer write), whatever the
# server drew.
_BOX = '[class*="st-key-pick_"] [data-testid="stCheckbox"] label'
_CSS = f"""
{_BOX}:has(input:checked) > span + div {{background: #ff4b4b url("data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 17 13'%3E%3Cpath d='M6.5 12.6L0 6.1l1.4-1.4 5.1 5.1L15.6.7 17 2.1z' fill='white'/%3E%3C/svg%3E") center / 65% no-repeat !important;
  border-color: #ff4b4b !important;}}
{_BOX}:has(input:not(:checked)) > span + div {{background: #fff none !important; border-color: #dcd8d4 !important;}}
{_BOX} > span + div > * {{display: none !important;}}
"""

# Installed once per page (document.__memauditPicks holds the picks); every render hands it the latest component.
_JS = """
export default function (component) {
  const { data, setStateValue } = component;
  const doc = document;
  const PICK = %(pick)s, SENDS = %(sends)s, TOGGLE = %(toggle)s;
  const state = doc.__memauditPicks ??= {ids: new Set(), version: null, seq: 0, anchor: null};
  state.send = () => setStateValue('picks', {ids: [...state.ids], seq: ++state.seq});
  if (data.version !== state.version) {
    state.ids = new Set(data.picks);
    state.version = data.version;
  }
  const CHECKED = Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'checked');
  const idOf = (element, prefix) => [...element.classList].find(c => c.startsWith(prefix)).slice(prefix.length);
  const boxes = () => [...doc.querySelectorAll('[class*="st-key-' + PICK + '"]')]
    .filter(box => box.querySelector('input[type="checkbox"]'));
  const focused = () => {
    const tile = doc.querySelector('[class*="st-key-tile"][class*="focus_"]');
    return tile && idOf(tile, 'st-key-tile').split('focus_')[1];
  };
  const setText = (root, pattern, text) => {
    const walker = doc.createTreeWalker(root, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      if (pattern.test(node.nodeValue) && node.nodeValue !== text) node.nodeValue = text;
    }
  };
  state.paint = () => {
    const page = new Set();
    for (const box of boxes()) {
      const id = idOf(box, 'st-key-' + PICK);
      page.add(id);
      const input = box.querySelector('input[type="checkbox"]');
      if (!Object.hasOwn(input, '__memaudit')) {  // React's writes of the server's state no longer reach it
        Object.defineProperty(input, 'checked', {configurable: true, set: () => {},
                                                 get: () => CHECKED.get.call(input)});
        input.__memaudit = true;
      }
      CHECKED.set.call(input, state.ids.has(id));
    }
    const bar = doc.querySelector('.st-key-decision_box');
    if (bar) {
      const n = state.ids.size, away = [...state.ids].filter(id => !page.has(id)).length;
      setText(bar, /^\\d+ picked$/, n + ' picked');
      setText(bar, /^\\d+ picked across pages/,
              n + ' picked across pages' + (away ? ', ' + away + ' not on this one' : ''));
    }
    const button = doc.querySelector('.st-key-' + TOGGLE + ' button');
    if (button) setText(button, /^(Un)?[pP]ick \\(p\\)$/, (state.ids.has(focused()) ? 'Unpick' : 'Pick') + ' (p)');
  };
  const toggle = (id, shift) => {
    const page = boxes().map(box => idOf(box, 'st-key-' + PICK));
    if (shift && page.includes(state.anchor) && page.includes(id)) {
      const [low, high] = [page.indexOf(state.anchor), page.indexOf(id)].sort((a, b) => a - b);
      page.slice(low, high + 1).forEach(i => state.ids.add(i));
    } else {
      state.ids.has(id) && !shift ? state.ids.delete(id) : state.ids.add(id);
      state.anchor = id;
    }
    state.paint();
  };
  if (!doc.__memauditPicksOn) {
    doc.__memauditPicksOn = true;
    const owned = (event) => {
      const target = event.target.closest ? event.target : event.target.parentElement;
      const box = target && target.closest('[class*="st-key-' + PICK + '"]');
      return [box && box.querySelector('input[type="checkbox"]') ? box : null,
              target && target.closest('.st-key-' + TOGGLE + ' button'), target];
    };
    doc.addEventListener('click', (event) => {
      const [box, pick, target] = owned(event);
      if (box || pick) {
        event.preventDefault();
        event.stopPropagation();
        const id = box ? idOf(box, 'st-key-' + PICK) : focused();
        if (id) toggle(id, !!box && event.shiftKey);
      } else if (target && SENDS.some(key => target.closest('.st-key-' + key + ' button'))) {
        state.send();
      }
    }, true);
    // new pick boxes, and counts that React wrote with the server's picks: painted before they are shown
    new MutationObserver(() => state.paint()).observe(doc.body, {childList: true, subtree: true,
                                                                 characterData: true});
  }
  state.paint();
}
"""

_component = st.components.v2.component(
    "memaudit_picks", css=_CSS, isolate_styles=False,
    js=_JS % {"pick": f'"{PICK_PREFIX}"', "sends": str(list(SENDS_PICKS)).replace("'", '"'),
              "toggle": f'"{PICK_BUTTON}"'})


def pick_sync() -> None:
    """Mount the page's pick keeper with the server's picks (the page takes them over when they changed)."""
    _component(key=SYNC_KEY, data={"picks": sorted(picked()), "version": st.session_state.get(VERSION_KEY, 0)},
               on_picks_change=_sent, height=0)


def _sent() -> None:
    """The page sent its picks: take them over (before the press that sent them acts on them)."""
    picked()
