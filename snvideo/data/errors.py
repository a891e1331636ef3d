"""The one exception the data pipeline raises for a video it cannot read."""
from __future__ import annotations

import re


class VideoReadError(Exception):
    """A video (or frame folder) that cannot be read.

    `reason` is short human text ("file not found", "zero-byte file", "no video stream",
    "cannot decode: <decoder message>", ...); str(err) is one line naming the file and the reason.
    """

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = " ".join(str(reason).split())  # always one line
        super().__init__(self.path, self.reason)

    def __str__(self) -> str:
        return f"cannot read video {self.path}: {self.reason}"

    def __reduce__(self):  # keep (path, reason) when crossing DataLoader worker boundaries
        return (type(self), (self.path, self.reason))


def short_message(err: BaseException, limit: int = 160) -> str:
    """First meaningful line of a decoder error, without decord's "[time] file.cc:123: [path]" prefixes."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.lower().startswith(("stack trace", "[bt]"))]
    text = lines[0] if lines else type(err).__name__
    while True:
        stripped = _DECORD_PREFIX.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    text = text or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


_DECORD_PREFIX = re.compile(r"^(\[[^\]]*\]|\S+\.(cc|h|cpp):\d+:)\s*")
