"""Child processes started with a settings environment (``shopstream.procs.spawn``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shopstream.procs import spawn
from shopstream.settings import Settings


def test_a_child_gets_the_settings_as_its_only_shopstream_environment_and_appends_to_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(Path(__file__).parents[2])  # the child imports tests.unit.print_env from here
    monkeypatch.setenv("SHOPSTREAM_PARTITIONS", "12")  # this process's: must not reach the child
    monkeypatch.setenv("SHOPSTREAM_STRAY", "x")
    monkeypatch.setenv("KEEP_ME", "kept")
    settings = Settings.from_env({}, app_id="child-app", partitions=3)
    log = tmp_path / "logs" / "child.log"
    log.parent.mkdir()
    log.write_text("earlier\n")
    names = ["SHOPSTREAM_APP_ID", "SHOPSTREAM_PARTITIONS", "SHOPSTREAM_STRAY", "KEEP_ME", "PYTHONUNBUFFERED"]
    proc = spawn("tests.unit.print_env", names, settings, log)
    assert proc.wait(30) == 0
    assert log.read_text().splitlines() == ["earlier", "child-app 3 None kept 1"]
