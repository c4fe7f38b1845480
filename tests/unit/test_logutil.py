"""gigamil.logutil: a Snakemake script's failure, traceback included, lands in the job's log."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((REPO / "workflow" / "scripts").glob("*.py"))


def _run(tmp_path: Path, body: str) -> tuple[subprocess.CompletedProcess, str]:
    log = tmp_path / "logs" / "job.log"
    script = tmp_path / "script.py"
    script.write_text(
        "from gigamil.logutil import setup_script_logging\n"
        f"setup_script_logging({str(log)!r})\n" + body
    )
    env_path = str(REPO / "workflow")
    res = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    return res, log.read_text()


def _python(code: str) -> subprocess.CompletedProcess:
    """``code`` run by a fresh Python with only the package on its path."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO / "workflow"), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )


@pytest.mark.parametrize(
    "body, expected",
    [
        # an error while the script sets up (an import) ...
        ("import gigamil_no_such_module\n", "ModuleNotFoundError"),
        # ... and one in the work itself
        ("def work():\n    raise ValueError('slide x is broken')\nwork()\n", "slide x is broken"),
    ],
)
def test_script_failure_is_in_its_log_with_traceback(tmp_path: Path, body: str, expected: str):
    res, log = _run(tmp_path, body)
    assert res.returncode == 1
    assert "job failed" in log and expected in log
    assert "Traceback (most recent call last)" in log
    assert log.count(expected) >= 1 and res.stderr.count("Traceback") == 1  # told once


def test_an_interrupted_script_says_so_in_one_line(tmp_path: Path):
    # Ctrl-C reaches a Snakemake job as SIGINT: no traceback on the terminal, a line in the log,
    # and the process still ends by SIGINT (Snakemake then treats the job as interrupted)
    res, log = _run(tmp_path, "def work():\n    raise KeyboardInterrupt\nwork()\n")
    assert res.returncode in (-2, 130), res.returncode
    assert "Traceback" not in res.stderr and "Traceback" not in log
    assert "job interrupted" in res.stderr and "job interrupted" in log


def test_every_script_sets_up_its_log_before_anything_else():
    for path in SCRIPTS:
        body = ast.parse(path.read_text()).body
        stmts = [
            s for s in body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
        ]
        first, second = ast.unparse(stmts[0]), ast.unparse(stmts[1])
        assert first == "from gigamil.logutil import setup_script_logging", path.name
        assert second == "setup_script_logging(snakemake.log[0])", path.name


def test_a_job_run_again_keeps_an_unfinished_attempts_log(tmp_path: Path):
    """train_fold killed at epoch 91 and run again resumed, but its log began at the resumed
    run: the killed attempt's lines were gone. A finished attempt's log is replaced."""
    log = tmp_path / "job.log"
    code = (
        "import logging, os, sys\n"
        "from gigamil.logutil import setup_script_logging\n"
        f"setup_script_logging({str(log)!r})\n"
        "logging.getLogger('gigamil').info('attempt %s', sys.argv[1])\n"
        "if sys.argv[2] == 'killed':\n"
        "    os._exit(143)  # as SIGTERM: no exit handlers\n"
        "if sys.argv[2] == 'fails':\n"
        "    raise ValueError('broken')\n"
    )
    env = {"PYTHONPATH": str(REPO / "workflow"), "PATH": "/usr/bin:/bin"}

    def attempt(n: int, how: str) -> str:
        log.unlink(missing_ok=True)  # as Snakemake does before it runs a job
        subprocess.run([sys.executable, "-c", code, str(n), how], env=env, capture_output=True)
        return log.read_text()

    text = attempt(1, "killed")
    assert "attempt 1" in text and "job done" not in text
    text = attempt(2, "done")
    assert text.index("attempt 1") < text.index("job started again") < text.index("attempt 2")
    assert text.rstrip().endswith("job done")
    text = attempt(3, "fails")  # after a finished attempt: a fresh log
    assert "attempt 2" not in text and "job started again" not in text
    assert "job failed: ValueError: broken" in text and "job done" not in text
    text = attempt(4, "done")  # after a failed one: kept
    assert "broken" in text and text.count("job started again") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["job.log"]  # job.log.unfinished deleted


def test_console_warnings_prefix_the_main_process_warnings_once():
    """The Snakemake main process has no logging set up; its warnings (a sheet's column, slides
    to be upsampled) read like config_warnings' lines."""
    code = (
        "import logging\n"
        "from gigamil.logutil import console_warnings\n"
        "console_warnings(); console_warnings()\n"
        "logging.getLogger('gigamil.wsi.preflight').warning('2 slide(s) are %s', 'coarser')\n"
        "logging.getLogger('gigamil.config').info('not shown')\n"
    )
    res = _python(code)
    assert res.returncode == 0, res.stderr
    assert res.stderr == "gigamil: warning: 2 slide(s) are coarser\n"


def test_setting_up_logging_again_releases_the_earlier_log_files(tmp_path: Path):
    """Each setup_logging replaces the handlers: the earlier call's log files are closed (a
    process that sets up many logs, e.g. the CLI called from Python, leaked a file each)."""
    import logging

    from gigamil.logutil import setup_logging

    root = logging.getLogger()
    kept = list(root.handlers)
    try:
        setup_logging(tmp_path / "a.log", also=tmp_path / "a.shadow")
        first = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
        assert len(first) == 2 and all(h.stream is not None for h in first)
        setup_logging(tmp_path / "b.log")
        assert all(h.stream is None for h in first)  # closed
        logging.getLogger("gigamil").info("to b only")
        assert "to b only" in (tmp_path / "b.log").read_text()
        assert "to b only" not in (tmp_path / "a.log").read_text()
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        for handler in kept:
            root.addHandler(handler)


def test_a_log_line_names_its_context_in_brackets_and_the_enclosing_one_comes_back():
    import io
    import logging

    from gigamil.logutil import current_context, format_handler, log_context

    stream = io.StringIO()
    handler = format_handler(logging.StreamHandler(stream))
    logger = logging.getLogger("gigamil.test_log_context")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("outside")
        with log_context("fold 2 predict ext"):
            with log_context("fold 2 epoch 3/20"):
                assert current_context() == "fold 2 epoch 3/20"
                logger.info("inner")
            assert current_context() == "fold 2 predict ext"
            logger.info("outer")
        assert current_context() == ""
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith(" INFO gigamil.test_log_context: outside")
    assert lines[1].endswith(" INFO [fold 2 epoch 3/20] gigamil.test_log_context: inner")
    assert lines[2].endswith(" INFO [fold 2 predict ext] gigamil.test_log_context: outer")


def test_python_warnings_reach_the_log_file(tmp_path: Path):
    """A library's warnings.warn (e.g. a deprecation in a job) is a line of the job's log."""
    res, log = _run(tmp_path, "import warnings\nwarnings.warn('this knob is deprecated')\n")
    assert res.returncode == 0, res.stderr
    assert "WARNING py.warnings: " in log and "this knob is deprecated" in log


def test_console_warnings_leave_out_info_lines_of_a_logger_set_to_info():
    code = (
        "import logging\n"
        "from gigamil.logutil import console_warnings\n"
        "logging.getLogger('gigamil').setLevel(logging.INFO)\n"
        "console_warnings()\n"
        "logging.getLogger('gigamil.config').info('not shown')\n"
        "logging.getLogger('gigamil.config').warning('shown')\n"
    )
    res = _python(code)
    assert res.returncode == 0, res.stderr
    assert res.stderr == "gigamil: warning: shown\n"
