"""The README's worked `evaluate` example runs exactly as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_evaluate_example_runs(tmp_path: Path) -> None:
    text = README.read_text()
    block = re.search(r"<!-- readme-example: evaluate -->\n```bash\n(.*?)```", text, re.S)
    assert block, "README lost its evaluate example"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.group(1)],
        cwd=tmp_path,
        env=env,
        check=True,
        timeout=120,
        capture_output=True,
    )
    metrics = json.loads((tmp_path / "f30k.json").read_text())["metrics"]
    assert set(metrics) >= {"i2t_R1", "t2i_R1", "rsum", "i2t_medr", "t2i_meanr"}
    assert 0 < metrics["rsum"] <= 600
