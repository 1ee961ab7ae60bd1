"""A dashboard session over streamlit's websocket protocol, speaking to the server what its browser frontend does.

Twenty chromium contexts on a two-core machine spend most of its CPU parsing and painting the frontend (about 5.5
CPU-seconds per context for a first Review page, against the server's 1), which real users' own machines would do.
`StClient` drives the real server instead: it opens `/_stcore/stream`, asks for a page by its URL path or its title,
sets widgets by their keys (checkbox, selectbox, text input, number input) and presses buttons as the frontend does
(a `rerun_script` BackMsg with the changed widget's state, a button as a one-shot trigger; the server merges it into
the session's widget states, so values the app itself changes, such as cleared picks, stay the app's), keeps the
elements of the latest script run (from the `Delta` ForwardMsgs, by delta path) and fetches a page's images over HTTP.
What it does not do is render: layout, charts and image decoding are the browser's own work.
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from collections.abc import Iterator

import websockets
from google.protobuf.message import Message
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState

# Which WidgetState field carries a widget's value, by element type.
VALUE_FIELDS = {"checkbox": "bool_value", "selectbox": "string_value", "text_input": "string_value",
                "number_input": "int_value"}
DONE = ForwardMsg.FINISHED_SUCCESSFULLY


class ClientError(RuntimeError):
    """The session could not do what was asked (no such widget or page, a lost connection, a timeout)."""


def _strings(message: Message) -> Iterator[str]:
    """Every string field of `message` and of the messages in it (bodies, labels, captions, options...)."""
    for field, value in message.ListFields():
        if field.type == field.TYPE_STRING:
            yield from (value if field.is_repeated else [value])
        elif field.type == field.TYPE_MESSAGE:
            for item in (value if field.is_repeated else [value]):
                if hasattr(item, "ListFields"):
                    yield from _strings(item)


class StClient:
    """One session of the dashboard at `url` (http://host:port): `open`, `navigate`, `set`, `press`; each waits until
    the script run it caused has ended (`timeout_s`), and `elements` then holds that run's elements by type."""

    def __init__(self, url: str, timeout_s: float = 120.0):
        self.url, self.timeout_s = url.rstrip("/"), timeout_s
        self.pages: dict[str, str] = {}  # page title -> page script hash (from the navigation message)
        self.page_hash = ""
        self.runs_ended = 0
        self._elements: dict[tuple[int, ...], tuple[str, Message]] = {}
        self._cache: dict[str, ForwardMsg] = {}
        self._changed = asyncio.Event()
        self._ws = None
        self._reader: asyncio.Task | None = None
        self._closed: BaseException | None = None

    async def __aenter__(self) -> StClient:
        stream = re.sub(r"^http", "ws", self.url) + "/_stcore/stream"
        self._ws = await websockets.connect(stream, subprotocols=["streamlit"], max_size=None,
                                            open_timeout=self.timeout_s)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._ws is not None:
            await self._ws.close()

    # ------------------------------------------------------------------------------------------- what comes in

    async def _read(self) -> None:
        try:
            async for data in self._ws:
                self._receive(ForwardMsg.FromString(data))
        except Exception as exc:  # reported to whoever waits next
            self._closed = exc
        else:
            self._closed = ClientError("the server closed the connection")
        self._changed.set()

    def _receive(self, msg: ForwardMsg) -> None:
        body = msg
        if msg.ref_hash:  # a message this session was sent before, by reference
            body = self._cache.get(msg.ref_hash)
            if body is None:
                raise ClientError(f"the server referred to message {msg.ref_hash}, never received")
        elif msg.hash:
            self._cache[msg.hash] = msg
        kind = body.WhichOneof("type")
        if kind == "new_session":  # every script run starts with one
            self._elements = {}
            self.page_hash = body.new_session.page_script_hash
        elif kind == "navigation":
            self.pages = {page.page_name: page.page_script_hash for page in body.navigation.app_pages}
            self.page_hash = body.navigation.page_script_hash or self.page_hash
        elif kind == "delta" and body.delta.WhichOneof("type") == "new_element":
            element = body.delta.new_element
            self._elements[tuple(msg.metadata.delta_path)] = (element.WhichOneof("type"), element)
        elif kind == "script_finished" and body.script_finished != ForwardMsg.FINISHED_EARLY_FOR_RERUN:
            self.runs_ended += 1
            self.last_status = body.script_finished
        self._changed.set()

    async def _run_ended_after(self, before: int, what: str) -> None:
        """Wait until a script run ended after `before` runs had."""
        deadline = time.monotonic() + self.timeout_s
        while self.runs_ended <= before:
            if self._closed is not None:
                raise ClientError(f"connection lost while {what}: {self._closed}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise ClientError(f"timed out waiting for the script run after {what}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                pass

    # ------------------------------------------------------------------------------------------- what goes out

    async def _rerun(self, what: str, page_name: str = "", changed: WidgetState | None = None) -> None:
        """Ask for a script run of the current page (or `page_name`), with the `changed` widget's new state."""
        msg = BackMsg()
        state = msg.rerun_script
        state.page_script_hash = "" if page_name else self.page_hash
        state.page_name = page_name
        if changed is not None:
            state.widget_states.widgets.append(changed)
        before = self.runs_ended
        await self._ws.send(msg.SerializeToString())
        await self._run_ended_after(before, what)

    async def open(self, url_path: str = "") -> None:
        """Open the page at `url_path` ('' for the default page), as a first visit or a bookmark does."""
        await self._rerun(f"opening /{url_path}", page_name=url_path or "")

    async def navigate(self, title: str) -> None:
        """Open the page titled `title` in the sidebar, as its link does."""
        if title not in self.pages:
            raise ClientError(f"no page titled {title!r} in the navigation ({', '.join(self.pages)})")
        self.page_hash = self.pages[title]
        await self._rerun(f"opening {title}")

    def widget(self, key: str) -> tuple[str, Message]:
        """(element type, its proto) of the widget with user key `key` in the latest run."""
        for kind, element in self._elements.values():
            sub = getattr(element, kind)
            if getattr(sub, "id", "").endswith(f"-{key}"):
                return kind, sub
        raise ClientError(f"no widget with key {key!r} on the page")

    async def set(self, key: str, value: bool | str | int) -> None:
        """Set the widget `key` to `value` (a selectbox: the option as shown) and wait for the rerun."""
        kind, sub = self.widget(key)
        if kind not in VALUE_FIELDS:
            raise ClientError(f"widget {key!r} is a {kind}, which this client cannot set")
        if kind == "selectbox" and value not in sub.options:
            raise ClientError(f"{value!r} is not an option of {key!r} ({', '.join(sub.options)})")
        state = WidgetState(id=sub.id)
        setattr(state, VALUE_FIELDS[kind], value)
        await self._rerun(f"setting {key}", changed=state)

    async def press(self, key: str) -> None:
        """Press the button `key` and wait for the rerun."""
        kind, sub = self.widget(key)
        if kind != "button":
            raise ClientError(f"widget {key!r} is a {kind}, not a button")
        if sub.disabled:
            raise ClientError(f"button {key!r} is disabled")
        await self._rerun(f"pressing {key}", changed=WidgetState(id=sub.id, trigger_value=True))

    # ------------------------------------------------------------------------------------------- reading a page

    def texts(self, *kinds: str) -> list[str]:
        """Every string of the latest run's elements (of `kinds` only, when given), in delta-path order."""
        return [text for path, (kind, element) in sorted(self._elements.items())
                if not kinds or kind in kinds for text in _strings(getattr(element, kind))]

    def headings(self) -> list[str]:
        """The headings of the latest run (titles and subheaders)."""
        return [element.heading.body for _, (kind, element) in sorted(self._elements.items()) if kind == "heading"]

    def errors(self, pattern: re.Pattern) -> list[str]:
        """Exceptions of the latest run and its alerts matching `pattern`."""
        shown = [f"exception {e.exception.type}: {e.exception.message}" for kind, e in self._elements.values()
                 if kind == "exception"]
        return shown + [e.alert.body for kind, e in self._elements.values()
                        if kind == "alert" and pattern.search(e.alert.body)]

    async def fetch_images(self) -> int:
        """GET every image of the latest run from the server's media endpoint, as a browser loads them; their
        count."""
        urls = [img.url for kind, e in self._elements.values() if kind == "imgs" for img in e.imgs.imgs]
        full = [url if url.startswith("http") else f"{self.url}{url}" for url in urls if url]
        await asyncio.gather(*(asyncio.to_thread(self._get, url) for url in full))
        return len(full)

    def _get(self, url: str) -> None:
        with urllib.request.urlopen(url, timeout=self.timeout_s) as response:  # noqa: S310 (loopback only)
            response.read()
