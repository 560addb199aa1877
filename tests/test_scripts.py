"""scripts/test, the README's test command, on a machine where it cannot install what it
needs: one line saying why and what to do, before it changes anything."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


#: What scripts/test says without root or sudo (the README's Troubleshooting quotes it).
NO_ROOT = ("scripts/test: prometheus and chromium are missing and apt-get needs root: run this "
           "as root, or install them first (apt-get install prometheus chromium)\n")


def test_without_root_or_sudo_it_says_what_to_install(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # no prometheus, chromium or sudo; not root
    bin_dir.mkdir()
    (bin_dir / "id").write_text("#!/bin/sh\necho 1000\n")
    (bin_dir / "id").chmod(0o755)
    os.symlink(shutil.which("dirname"), bin_dir / "dirname")
    done = subprocess.run([shutil.which("bash"), str(ROOT / "scripts" / "test")],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": str(bin_dir), "HOME": str(tmp_path)})
    assert done.returncode == 1, done
    assert done.stderr == NO_ROOT, done.stderr
