"""apt-cache output parsing and the non-terminal progress output."""

from __future__ import annotations

import io

from xvm.images.debian import parse_depends
from xvm.images.progress import Progress

APT_CACHE_DEPENDS = """linux-image-cloud-amd64
  Depends: linux-image-6.1.0-56-cloud-amd64
 |Depends: <virtual-thing>
  Recommends: firmware-linux-free
"""


def test_parse_depends():
    assert parse_depends(APT_CACHE_DEPENDS) == ["linux-image-6.1.0-56-cloud-amd64"]


def test_progress_is_plain_and_quiet_without_a_terminal():
    stream = io.StringIO()
    progress = Progress(stream=stream, interval=3600)
    progress.stage("building the kernel")
    for index in range(1000):
        progress.note(f"CC file{index}.o")
        progress.update(index, 1000)
    progress.done("ok")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "xvm: building the kernel ..."
    assert lines[1].startswith("xvm: building the kernel: ok (")
    assert len(lines) == 2 and "\r" not in stream.getvalue()


def test_progress_live_redraws_one_line():
    stream = io.StringIO()
    progress = Progress(stream=stream, live=True)
    progress.stage("downloading")
    progress.update(50, 100)
    progress.done()
    text = stream.getvalue()
    assert "\r\033[K" in text and text.endswith("\n") and text.count("\n") == 1
