"""diffusers and torch belong in pipelines/: the generator's async side runs without loading them."""

from __future__ import annotations

import subprocess
import sys


def test_the_generator_handlers_do_not_import_torch():
    code = "import sys, services.generator.handlers; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "False"
