"""Every ```python block marked <!-- test --> in README.md and docs/slicer-module.md runs against slicer-core.

Blocks marked ``<!-- test: requires COMMAND -->`` run once the CLI has that command (skipped before),
with tiny models prepared for them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from latentdrift.bridge.scene import load_volume_node
from latentdrift.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "docs" / "slicer-module.md", ROOT / "README.md"]
PRINTED = {
    "slicer-module.md": ("failed as expected", "slice ", "fine-tuned to step 2"),
    "README.md": ("segments:", "counterfactual:"),
}
"""What each document's examples print when they really ran."""
BLOCK = re.compile(r"<!-- test(?:: requires (?P<command>[\w-]+))? -->\s*```python\n(?P<code>.*?)```", re.S)


def _commands() -> set[str]:
    parser = build_parser()
    return {name for action in parser._subparsers._group_actions for name in action.choices}  # type: ignore[union-attr]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_doc_has_tested_examples(doc: Path) -> None:
    assert len(BLOCK.findall(doc.read_text())) >= 3


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_doc_examples_run(doc: Path, session, oblique_nifti: Path, tmp_path: Path, capsys) -> None:
    namespace = {"volume_node": load_volume_node(session, oblique_nifti), "session": session}
    commands = _commands()
    skipped = []
    for match in BLOCK.finditer(doc.read_text()):
        command = match.group("command")
        if command and command not in commands:
            skipped.append(command)
            continue
        if command == "counterfactual" and "edit_model" not in namespace:
            from latentdrift.fixtures.tiny_models import build_tiny_sd

            namespace["edit_model"] = build_tiny_sd(tmp_path / "tiny-ip2p", instruct=True)
        if command == "finetune" and "cohort_csv" not in namespace:
            from train_support import tiny_base, write_cohort

            namespace["cohort_csv"] = write_cohort(tmp_path / "cohort")
            namespace["base_model"] = tiny_base(tmp_path / "tiny-sd")
            namespace["job_dir"] = tmp_path / "job"
        if command == "segment" and "ldseg_model" not in namespace:
            from latentdrift.segmentation.ldseg import LDSegNetwork, save_ldseg_model, tiny_config

            namespace["ldseg_model"] = save_ldseg_model(LDSegNetwork(tiny_config()), tmp_path / "tiny-ldseg")
        exec(compile(match.group("code"), f"{doc.name} block at {match.start()}", "exec"), namespace)
    printed = capsys.readouterr().out
    assert all(marker in printed for marker in PRINTED[doc.name]), printed
    if skipped:
        pytest.skip(f"examples not run: {', '.join(skipped)}")
