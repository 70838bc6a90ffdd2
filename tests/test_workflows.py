"""The GitHub workflows: valid against the GitHub-workflow schema (check-jsonschema's vendored copy), and the
sync workflow triggers on the paths space.toml syncs and does build -> sync -> upload the log (issue 9)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO
from openllm.space.manifest import load_manifest

WORKFLOWS = REPO / ".github" / "workflows"


def check(*paths: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    return subprocess.run(
        [exe, "--builtin-schema", "vendor.github-workflows", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def load(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    data["on"] = data.get("on", data.pop(True, None))  # YAML 1.1 reads a bare `on` as true
    return data


def test_every_workflow_matches_the_github_schema():
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {"ci.yml", "sync-space.yml"} <= {f.name for f in files}
    proc = check(*files)  # one start of the checker (half a second each) for all of them
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_schema_check_can_fail(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("name: bad\non:\n  push:\n    branchez: [main]\njobs:\n  x:\n    steps:\n      - run: true\n")
    assert check(bad).returncode != 0


def test_sync_workflow_triggers_on_the_synced_paths_and_syncs():
    wf = load("sync-space.yml")
    on = wf["on"]
    assert "workflow_dispatch" in on and on["push"]["branches"] == ["main"]
    paths = on["push"]["paths"]
    m = load_manifest(REPO)
    for rule in m.rules:  # every synced source triggers the sync
        assert rule.source in paths, rule.source
    for how in m.generated.values():
        if "/" in how:  # a copied source (docs/app.md -> HELP.md)
            assert how in paths, how
    assert "space.toml" in paths
    for never in ("tests/**", "docs/**", "data/**"):
        assert never not in paths
    steps = wf["jobs"]["sync"]["steps"]
    runs = "\n".join(s.get("run", "") for s in steps)
    assert "openllm space build --out" in runs and "openllm space sync" in runs and "--hub hf" in runs
    sync_step = next(s for s in steps if "openllm space sync" in s.get("run", ""))
    assert sync_step["env"]["HF_TOKEN"] == "${{ secrets.HF_TOKEN }}"
    # Trusted Publishers beside the secret: the job may mint an OIDC id token, and huggingface_hub exchanges it
    # when the repository variable names the Space (HfHub reads HF_OIDC_RESOURCE before HF_TOKEN)
    assert wf["permissions"]["id-token"] == "write" and wf["permissions"]["contents"] == "read"
    assert sync_step["env"]["HF_OIDC_RESOURCE"] == "${{ vars.HF_OIDC_RESOURCE }}"
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert "artifacts/build.log" in upload["with"]["path"] and upload["if"] == "always()"
