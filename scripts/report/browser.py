"""Open a report in headless Chromium: a PNG of the whole page, and everything that went wrong on it.

    python -m scripts.report.browser runs/demo/report.html [--png runs/demo/report.png]

Chromium runs headless with its DevTools protocol on a pipe (``--remote-debugging-pipe``: it reads
commands from file descriptor 3 and writes answers and events to 4, NUL-separated JSON), so no
port is opened and the standard library is enough. The page is loaded from its file, then the
check collects

- console errors and uncaught exceptions (``Runtime.consoleAPICalled``, ``Runtime.exceptionThrown``),
- log entries of level error (``Log.entryAdded``: resources that failed to load, ...),
- images that did not decode (no natural width once the page has loaded),

and takes a screenshot of the whole page. It exits 1 and lists the problems when there are any.
Debian's package is ``chromium``; ``CHROMIUM=/path/to/chrome`` picks another browser.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--remote-debugging-pipe",
)
VIEWPORT_WIDTH = 1280
IMAGES_SCRIPT = (
    "JSON.stringify(Array.from(document.images).map("
    "i => ({alt: i.alt, src: i.src.slice(0, 80), width: i.naturalWidth, complete: i.complete})))"
)


# Runs before Chromium, in its process: puts the pipe ends on the descriptors Chromium expects
# (by way of descriptors above 9, so that neither end overwrites the other), then becomes Chromium.
ON_DESCRIPTORS_3_AND_4 = """
import fcntl, os, sys
reads, writes = (fcntl.fcntl(int(fd), fcntl.F_DUPFD, 10) for fd in sys.argv[1:3])
os.dup2(reads, 3)
os.dup2(writes, 4)
os.execvp(sys.argv[3], sys.argv[3:])
"""


class BrowserError(RuntimeError):
    """Chromium could not be started or did not answer."""


def find_chromium() -> str | None:
    """``$CHROMIUM``, else the first Chromium or Chrome on the PATH."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((found for name in CANDIDATES if (found := shutil.which(name))), None)


@dataclass
class PageCheck:
    """What the browser saw: the screenshot, the page's images, and every problem, in words."""

    png: bytes
    images: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class DevToolsPipe:
    """One headless Chromium and its DevTools protocol over a pipe."""

    def __init__(self, chromium: str, timeout_s: float = 60.0):
        self.timeout_s = timeout_s
        self.profile = tempfile.mkdtemp(prefix="report-chromium-")
        to_browser, self._commands = os.pipe()
        self._answers, from_browser = os.pipe()
        self.process = subprocess.Popen(
            [sys.executable, "-c", ON_DESCRIPTORS_3_AND_4, str(to_browser), str(from_browser),
             chromium, *FLAGS, f"--user-data-dir={self.profile}", f"--window-size={VIEWPORT_WIDTH},900",
             "about:blank"],
            pass_fds=(to_browser, from_browser), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._next_id = 0
        self._inbox: queue.Queue[dict | None] = queue.Queue()
        self.events: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buffer = b""
        with os.fdopen(self._answers, "rb", buffering=0) as answers:
            while chunk := answers.read(65536):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for message in messages:
                    self._inbox.put(json.loads(message))
        self._inbox.put(None)  # the browser closed its end

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Sends one command and returns its result; events that arrive meanwhile are kept."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._receive(f"an answer to {method}")
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error'].get('message', answer['error'])}")
                return answer.get("result", {})
            self.events.append(answer)

    def wait_for(self, method: str, session: str) -> dict:
        """Waits for the event ``method`` of ``session`` (earlier events are kept)."""
        for event in self.events:
            if event.get("method") == method and event.get("sessionId") == session:
                return event
        while True:
            event = self._receive(f"the event {method}")
            self.events.append(event)
            if event.get("method") == method and event.get("sessionId") == session:
                return event

    def _receive(self, what: str) -> dict:
        try:
            message = self._inbox.get(timeout=self.timeout_s)
        except queue.Empty:
            raise BrowserError(f"Chromium sent no {what} within {self.timeout_s:g} s") from None
        if message is None:
            ended = self.process.poll() is not None
            stderr = self.process.stderr.read().decode(errors="replace")[-2000:] if ended else ""
            raise BrowserError(f"Chromium closed the DevTools pipe while waiting for {what}: {stderr}")
        return message

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                os.write(self._commands, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
                self.process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        finally:
            os.close(self._commands)
            self.process.stderr.close()
            shutil.rmtree(self.profile, ignore_errors=True)


def check_page(path: str | Path, chromium: str | None = None, timeout_s: float = 60.0) -> PageCheck:
    """Loads ``path`` in headless Chromium; its screenshot, images and problems (``PageCheck``)."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise BrowserError(f"no Chromium found (looked for {', '.join(CANDIDATES)}; set CHROMIUM=)")
    browser = DevToolsPipe(chromium, timeout_s)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Page.navigate", {"url": Path(path).resolve().as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired", session)
        images = json.loads(browser.send(
            "Runtime.evaluate", {"expression": IMAGES_SCRIPT, "returnByValue": True}, session=session,
        )["result"]["value"])
        size = browser.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
        shot = browser.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": max(size["width"], VIEWPORT_WIDTH), "height": size["height"],
                     "scale": 1},
        }, session=session)
        problems = page_problems(browser.events, session) + [
            f"image {image['alt'] or image['src']!r} did not load" for image in images
            if not image["complete"] or image["width"] == 0
        ]
        return PageCheck(base64.b64decode(shot["data"]), images, problems)
    finally:
        browser.close()


def page_problems(events: list[dict], session: str) -> list[str]:
    """Console errors, uncaught exceptions and error log entries among a page's DevTools events."""
    problems = []
    for event in events:
        if event.get("sessionId") != session:
            continue
        params = event.get("params", {})
        match event.get("method"):
            case "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                text = details.get("exception", {}).get("description") or details.get("text", "")
                problems.append(f"uncaught exception: {text}")
            case "Runtime.consoleAPICalled" if params.get("type") in ("error", "assert"):
                text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params["args"])
                problems.append(f"console.{params['type']}: {text}")
            case "Log.entryAdded" if params["entry"].get("level") == "error":
                entry = params["entry"]
                where = f" ({entry['url']})" if entry.get("url") else ""
                problems.append(f"{entry.get('source', 'log')} error: {entry.get('text', '')}{where}")
    return problems


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("page", type=Path, help="the HTML file (a report)")
    parser.add_argument("--png", type=Path, help="where the screenshot goes (default: beside the page)")
    args = parser.parse_args(argv)
    if not args.page.is_file():
        sys.exit(f"no such page: {args.page}")
    try:
        checked = check_page(args.page)
    except BrowserError as error:
        sys.exit(f"browser: {error}")
    png = args.png or args.page.with_suffix(".png")
    png.write_bytes(checked.png)
    print(f"{len(checked.images)} images; screenshot: {png}")
    for problem in checked.problems:
        print(f"  PROBLEM {problem}")
    sys.exit(1 if checked.problems else 0)


if __name__ == "__main__":
    main()
