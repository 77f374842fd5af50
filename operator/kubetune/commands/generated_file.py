"""Print, write or check a file generated from the models (the CRD, the reference): one behaviour for both."""

from __future__ import annotations

import sys
from pathlib import Path

from kubetune.contract import EXIT_FAILED, EXIT_OK


def emit_generated(text: str, output: Path | None, check: bool, regenerate: str) -> int:
    """Print `text`, write it to `output`, or (with `check`) compare it with `output`.

    `regenerate` is the command that writes the file, quoted in the stale-file message. Returns 0, or 1 when
    --check finds the file stale or has no file to check.
    """
    if output is None:
        if check:
            print(f"--check needs --output PATH (the file `{regenerate}` writes)", file=sys.stderr)
            return EXIT_FAILED
        sys.stdout.write(text)
        return EXIT_OK
    if check:
        current = output.read_text(encoding="utf-8") if output.exists() else ""
        if current != text:
            print(f"{output} is stale: regenerate it with `{regenerate} -o {output}`", file=sys.stderr)
            return EXIT_FAILED
        print(f"{output} is up to date")
        return EXIT_OK
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    print(f"wrote {output}")
    return EXIT_OK
