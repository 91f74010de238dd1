"""The evidence pipeline (benchmarks/evidence/run.py --quick) end to end, and its resume from the cache."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "evidence" / "run.py"
SECTIONS = ("section1_drift", "section2_counterfactual", "section3_classifier", "section4_prompts")


def numbers(value: Any) -> list[float]:
    """Every number inside a JSON value."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in numbers(v)]
    return []


def run_quick(tmp_path: Path) -> dict[str, Any]:
    command = [
        sys.executable,
        str(SCRIPT),
        "--quick",
        "--work",
        str(tmp_path / "work"),
        "--output",
        str(tmp_path / "out"),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_quick_evidence_runs_every_section_and_resumes_from_its_cache(tmp_path: Path) -> None:
    results = run_quick(tmp_path)
    assert "--quick" in results["command"] and "benchmarks/evidence/run.py" in results["command"]
    for name in SECTIONS:
        values = numbers(results[name])
        assert values and all(math.isfinite(v) for v in values), name
    section1 = results["section1_drift"]
    assert {(r["scheme"], r["drift"]) for r in section1["rows"]} == {
        (s, d)
        for s in ("basic", "lora", "textual-inversion", "dreambooth", "custom-diffusion")
        for d in (False, True)
    }
    for row in section1["rows"]:
        assert row["fid"] >= -1e-6 and row["samples"] == results["sizes"]["samples"]
        assert math.isfinite(row["kid"]) and row["mean_image_l1"] > 0
    summary = results["section2_counterfactual"]["summary"]
    assert [r["delta"] for r in summary["rows"]] == results["sizes"]["deltas"]
    assert all(-1 <= r["ssim"] <= 1 and -1 <= r["ssim_outside"] <= 1 for r in summary["rows"])
    assert -1 <= summary["variants"]["reconstruction_reference"]["ssim_outside"] <= 1
    assert results["inputs"]["pair_subjects"] == len(results["section2_counterfactual"]["subjects"])
    assert all(0 <= r["auc"] <= 1 for r in results["section3_classifier"]["rows"])
    assert len(results["section4_prompts"]["styles"]) == 4 and len(results["section4_prompts"]["ages"]) == 3
    out = tmp_path / "out"
    markdown = (out / "results.md").read_text(encoding="utf-8")
    assert results["command"] in markdown and "Inception weights are unavailable offline" in markdown
    for png in results["figures"]:
        assert (out / png).stat().st_size > 1000
    again = run_quick(tmp_path)
    assert all(stage["cached"] for stage in again["stage_seconds"].values())
    assert again["section1_drift"] == section1


def test_the_editors_recorded_settings_and_the_reconstruction_reference_get_their_own_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    sections, report = importlib.import_module("sections"), importlib.import_module("report")

    def fidelity(ssim: float, predicted: float) -> dict[str, float]:
        return {"ssim": ssim, "psnr": 20.0, "ssim_outside": ssim, "predicted_change_ml": predicted}

    subjects = [
        {
            "true_change_ml": truth,
            "no_edit_ssim": 0.99,
            "no_edit_psnr": 30.0,
            "measured_true_change_ml": truth,
            "per_delta": [{"delta": -0.05, **fidelity(0.95, truth + noise)}],
            "recorded_settings": {"delta": -0.05, **fidelity(0.8, 2 * truth)},
            "reconstruction_reference": {"delta": -0.05, **fidelity(0.85, -truth)},
        }
        for truth, noise in ((1.0, 0.1), (2.0, -0.1), (4.0, 0.1), (8.0, -0.1))
    ]
    summary = sections._summarise(subjects, (-0.05,))
    recorded = summary["variants"]["recorded_settings"]
    reconstruction = summary["variants"]["reconstruction_reference"]
    assert recorded["ssim"] == pytest.approx(0.8)
    assert recorded["pearson_r"] == pytest.approx(1.0) and recorded["mae_ml"] == pytest.approx(15 / 4)
    assert reconstruction["pearson_r"] == pytest.approx(-1.0) and reconstruction["mae_ml"] == pytest.approx(
        7.5
    )
    low, high = summary["rows"][0]["pearson_r_ci95"]
    assert low < summary["rows"][0]["pearson_r"] < high <= 1.0
    section = {
        "summary": summary,
        "settings": {
            "steps": 10,
            "guidance": 7.5,
            "image_guidance": 1.5,
            "change_margin_voxels": 2,
            "ventricle_roi_mm": 6,
        },
        "editor": "editor",
        "editor_source": "given",
        "editor_drift_recorded": -0.05,
    }
    text = "\n".join(report._section2({"section2_counterfactual": section}))
    assert "-0.05, with drifted start (the editor's recorded settings)" in text
    assert "SSIM 0.800 vs 0.950" in text
    assert "-0.05, change relative to the VAE reconstruction" in text
    assert "ventricle change r = -1.000 vs 0.99" in text
    assert "SSIM outside 0.950: **met**" in text
    section["summary"]["rows"][0]["ssim_outside"] = 0.85
    assert "SSIM outside 0.850: **not met**" in "\n".join(
        report._section2({"section2_counterfactual": section})
    )
    subjects[0]["recorded_settings"] = {}
    variants = sections._summarise(subjects, (-0.05,))["variants"]
    assert variants["recorded_settings"] is None and variants["reconstruction_reference"] is not None
