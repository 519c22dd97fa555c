"""The README's Quick start, as written there, on a machine with no model hub: a home folder of real photos
and PDFs, `mmrag index ~/Pictures ~/Documents` and the commands after it, each in its own process.

The hub is made unreachable (HF_ENDPOINT on a closed loopback port, HF_HUB_OFFLINE unset), as on these
machines: the first run must say in one line what it chose (the offline profile) and everything after it
must work without repeating --config.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.realdata import PHOTO_DESCRIPTIONS, photo_bytes, write_pdf_with_photos, write_photos

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parent.parent / "README.md"


def quick_start_commands() -> list[str]:
    """The `mmrag ...` lines of the README's Quick start block (setup lines aside), comments dropped."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Quick start") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README's Quick start has no bash block"
    lines = [line.split("  #", 1)[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line.startswith("mmrag ")]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens on it once the socket is closed


def test_the_quick_start_works_as_written_without_a_hub(tmp_path: Path) -> None:
    commands = quick_start_commands()
    assert [c.split()[1] for c in commands] == ["index", "query", "query", "stats"]
    home = tmp_path / "home"
    write_photos(home / "Pictures", ["chelsea", "coffee", "rocket", "astronaut"])
    write_pdf_with_photos(
        home / "Documents" / "report.pdf",
        [["rocket"], ["chelsea"]],
        text=[PHOTO_DESCRIPTIONS["rocket"][:300], PHOTO_DESCRIPTIONS["chelsea"][:300]],
    )
    work = tmp_path / "work"
    work.mkdir()
    (work / "photo.jpg").write_bytes(photo_bytes("chelsea"))  # the user's own photo, in the current folder
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("MMRAG_") and key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    env.update(
        HOME=str(home),
        XDG_DATA_HOME=str(tmp_path / "xdg"),
        HF_HOME=str(tmp_path / "hf"),
        HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}",
    )

    outputs = []
    for command in commands:
        argv = [str(home) + a[1:] if a.startswith("~") else a for a in shlex.split(command)]  # the shell's ~
        result = subprocess.run(
            [sys.executable, "-m", *argv], cwd=work, env=env, capture_output=True, text=True, timeout=900
        )
        assert result.returncode == 0, f"{command}\n{result.stderr}"
        assert "Traceback" not in result.stderr, result.stderr
        outputs.append(result)

    index, text_query, image_query, stats = outputs
    notes = [line for line in index.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "offline profile" in notes[0], index.stderr
    assert "indexed 5 files" in index.stderr, index.stderr
    assert "note:" not in text_query.stderr + image_query.stderr + stats.stderr  # remembered, not re-chosen
    rows = text_query.stdout.splitlines()[1:]
    assert rows and any("chelsea.jpg" in row for row in rows[:3]), text_query.stdout
    image_rows = image_query.stdout.splitlines()[1:]
    assert len(image_rows) == 5 and "chelsea" in image_rows[0], image_query.stdout
    assert "built with: text space" in stats.stdout, stats.stdout
    assert (tmp_path / "xdg" / "mmrag" / "mmrag.db").is_file()
