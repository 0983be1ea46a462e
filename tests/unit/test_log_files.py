"""The quiet console's log stream: the command's file by default, a stage's file while the stage runs."""

from __future__ import annotations

import logging
from pathlib import Path

from polyalign_ray.log_files import (
    ActiveStreamHandler,
    SwitchableLogStream,
    activate,
    prints_to_log_file,
    stage_log_file,
)


def test_lines_go_to_the_stage_file_while_it_runs_and_to_the_run_log_otherwise(tmp_path: Path) -> None:
    stream = SwitchableLogStream(tmp_path / "logs" / "ray.log")
    handler = ActiveStreamHandler()
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    logger = logging.getLogger("test_log_files.ray")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    activate(stream)
    try:
        logger.info("starting")
        with stage_log_file(tmp_path / "logs" / "sft.log") as path:
            assert path == tmp_path / "logs" / "sft.log"
            logger.info("sft says")
            stream.write("(worker pid=1) a worker line\n")
        logger.info("shutting down")
    finally:
        activate(None)
        logger.removeHandler(handler)
        stream.close()
    assert (tmp_path / "logs" / "ray.log").read_text() == (
        "test_log_files.ray: starting\ntest_log_files.ray: shutting down\n"
    )
    assert (
        tmp_path / "logs" / "sft.log"
    ).read_text() == "test_log_files.ray: sft says\n(worker pid=1) a worker line\n"


def test_without_an_active_stream_nothing_is_written_and_nothing_breaks(tmp_path: Path, capsys) -> None:
    activate(None)
    with stage_log_file(tmp_path / "x.log") as path, prints_to_log_file():
        assert path is None
        ActiveStreamHandler().emit(logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None))
        print("a -v console shows it")
    assert not (tmp_path / "x.log").exists()
    assert capsys.readouterr().out == "a -v console shows it\n"


def test_a_librarys_prints_go_to_the_stage_file_and_the_console_keeps_ours(tmp_path: Path, capsys) -> None:
    """Ray Tune prints its experiment table whatever the verbosity; in a filed block it lands in the file."""
    stream = SwitchableLogStream(tmp_path / "ray.log")
    activate(stream)
    try:
        with stage_log_file(tmp_path / "seeds.log"), prints_to_log_file():
            print("| Configuration for experiment | tune |")
        print("seed 0: done")
    finally:
        activate(None)
        stream.close()
    assert (tmp_path / "seeds.log").read_text() == "| Configuration for experiment | tune |\n"
    assert capsys.readouterr().out == "seed 0: done\n"
