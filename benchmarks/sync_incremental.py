"""Incremental vs full Space sync on a 2,000-file tree (issue 9).

Builds a main repository whose package holds N files, syncs it to an empty Space on a local hub (full sync:
every file uploaded), then changes ONE file and syncs again (incremental: one file uploaded), several times.
Both runs do the same work around the upload (build, change detection, hash validation, post-push
verification, tag, state); the clean-environment check is left out of both (it is cached per requirements
and the same for both). The build's parse cache (imports per file content) is warm for every run but the
first full one, as it is for any sync after the first. Prints each run, the medians, and incremental/full.

    python benchmarks/sync_incremental.py [--files 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def make_tree(root: Path, n_files: int) -> None:
    """A repository whose built Space has exactly ``n_files`` files: ~90% Python modules, ~10% configs."""
    root.mkdir(parents=True)
    (root / "space.toml").write_text((REPO / "space.toml").read_text())
    (root / "pyproject.toml").write_text(
        '[project]\nname = "openllm"\nversion = "0"\nlicense = "MIT"\ndependencies = ["gradio>=4.44"]\n'
    )
    (root / "docs").mkdir()
    (root / "docs/app.md").write_text("# Help\n")
    pkg = root / "src/openllm"
    (pkg / "app").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "app/__init__.py").write_text("def launch(*, host='127.0.0.1', port=7860):\n    import gradio\n")
    (root / "configs").mkdir()
    count = 2 + 5  # the two files above + the 5 generated Space files
    for i in range(n_files // 10):
        (root / f"configs/preset_{i:04d}.json").write_text(f'{{"name": "p{i}", "lr": 0.0003, "steps": {i}}}\n')
        count += 1
    body = "".join(f"def f{j}(x):\n    return x * {j} + 1\n\n" for j in range(40))  # ~1.2 kB a module
    i = 0
    while count < n_files:
        d = pkg / f"part{i // 100:02d}"
        if not d.exists():
            d.mkdir()
            (d / "__init__.py").write_text("")
            count += 1
            if count >= n_files:
                break
        (d / f"mod_{i:04d}.py").write_text(f'"""module {i}"""\nimport math\n\n{body}')
        count += 1
        i += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="openllm-bench-sync-") as tmp:
        tmp = Path(tmp)
        os.environ["OPENLLM_CACHE"] = str(tmp / "cache")
        from openllm.hub import LocalHub
        from openllm.space.retry import RetryPolicy
        from openllm.space.sync import Syncer

        main_repo = tmp / "main"
        make_tree(main_repo, args.files)
        full, incr = [], []
        for r in range(args.repeats):
            hub = LocalHub(root=tmp / f"hub{r}")
            s = Syncer("bench/space", hub, main_repo, policy=RetryPolicy(attempts=1), log=lambda m: None)
            t = time.perf_counter()
            res = s.sync(env_check=False)
            full.append(time.perf_counter() - t)
            n_total = len(res.plan.build.files)
            print(f"full sync        {full[-1]:7.2f} s  uploaded {res.record.uploaded:5d} of {n_total} files")
            for k in range(args.repeats):
                target = main_repo / "src/openllm/part00/mod_0001.py"
                target.write_text(target.read_text() + f"# edit {r}.{k}\n")
                t = time.perf_counter()
                res = Syncer("bench/space", hub, main_repo, policy=RetryPolicy(attempts=1), log=lambda m: None).sync(
                    env_check=False
                )
                incr.append(time.perf_counter() - t)
                assert res.record.uploaded == 1 and res.plan.uploads == ["training/part00/mod_0001.py"], (
                    res.plan.uploads
                )
                print(f"incremental sync {incr[-1]:7.2f} s  uploaded {res.record.uploaded:5d} of {n_total} files")
        f, i = statistics.median(full), statistics.median(incr)
        print(f"\nmedian full sync        {f:.2f} s ({n_total} files uploaded)")
        print(f"median incremental sync {i:.2f} s (1 file uploaded)")
        print(f"incremental / full      {i / f:.3f}  ({f / i:.1f}x faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
