"""error_text: what a failed attempt's log row holds (no database)."""

from __future__ import annotations

from pybatchintory.batch import _MAX_LOG_TEXT, error_text


def _read_manifest(path: str) -> None:
    raise FileNotFoundError(f"no manifest at {path}")


def test_a_raised_exception_gives_its_message_and_traceback() -> None:
    try:
        _read_manifest("s3://bucket/manifest.json")
    except FileNotFoundError as exc:
        text = error_text(exc)
    assert text.startswith("Traceback (most recent call last):")
    assert "_read_manifest" in text and "test_error_text.py" in text
    assert text.rstrip().endswith("FileNotFoundError: no manifest at s3://bucket/manifest.json")


def test_a_chained_exception_keeps_its_cause() -> None:
    try:
        try:
            _read_manifest("a")
        except FileNotFoundError as inner:
            raise RuntimeError("batch failed") from inner
    except RuntimeError as exc:
        text = error_text(exc)
    assert "FileNotFoundError: no manifest at a" in text
    assert "direct cause of the following exception" in text
    assert text.rstrip().endswith("RuntimeError: batch failed")


def test_an_exception_never_raised_gives_its_type_and_message() -> None:
    assert error_text(ValueError("bad row 12")).strip() == "ValueError: bad row 12"


def test_a_text_is_kept_verbatim() -> None:
    assert error_text("upstream not ready; retry later") == "upstream not ready; retry later"
    assert error_text("") == ""


def test_a_huge_text_keeps_its_end() -> None:
    text = "x" * (_MAX_LOG_TEXT * 2) + "THE END"
    kept = error_text(text)
    assert len(kept) == _MAX_LOG_TEXT + 1
    assert kept.startswith("…") and kept.endswith("THE END")


def test_a_huge_exception_message_is_bounded_and_keeps_its_end() -> None:
    try:
        raise ValueError("y" * (_MAX_LOG_TEXT * 2) + " last words")
    except ValueError as exc:
        kept = error_text(exc)
    assert len(kept) == _MAX_LOG_TEXT + 1 and kept.rstrip().endswith("y last words")
