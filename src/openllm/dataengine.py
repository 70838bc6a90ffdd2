"""Preparing and tokenizing on an existing data engine: datatrove's local, Ray or Slurm executor (``openllm
prepare-data --executor``, ``openllm tokenize --executor``; needs ``pip install 'openllm[data]'``).

prepare-data: task ``r`` reads and cleans its share of the sources with :func:`openllm.prepare.clean_documents`;
the merge runs :func:`openllm.prepare.write_prepared` (deduplication, the split by document hash, the report) over
the parts in source order, so the folder is byte-identical to ``openllm prepare-data``'s.

tokenize: the work is the one :func:`openllm.shards.tokenize_corpus` does, cut the same way: :func:`~openllm.shards.
plan_tokenize` splits each split's ``.jsonl`` into byte ranges; datatrove task ``r`` of ``T`` encodes a contiguous
slice of those ranges with :func:`~openllm.shards.encode_range` and keeps each range's ids as a part file; a
final merge hands the parts, in range order, to :func:`~openllm.shards.write_tokenized`, the single writer that
decides the shard layout. So the shards and ``meta.json`` are byte-identical to ``openllm tokenize`` with the
same ``--workers`` (which sizes the ranges) and ``--shard-tokens``.

The parts and datatrove's logs (its ``completions/NNNNN`` markers: a finished task is not run again) live in a
work folder, ``OUT.datatrove`` unless given, removed once the output is written. A rerun after a kill picks up
where the tasks stopped; a rerun with other inputs, tokenizer, ranges or task count starts the work folder over.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import OpenLLMError, require
from .fsio import atomic_file, write_bytes_atomic, write_json_atomic
from .prepare import Source, clean_documents, prepare_options, resolve_for_output, write_prepared
from .shards import DEFAULT_SHARD_TOKENS, TokenizePlan, encode_range, plan_tokenize, write_tokenized

__all__ = ["EXECUTORS", "tokenize_on_engine", "prepare_on_engine", "work_dir_for"]

EXECUTORS = ("local", "ray", "slurm")
PLAN_FILE = "plan.json"
Job = tuple[str, str, int, int, str]


def work_dir_for(out_dir: str | os.PathLike) -> Path:
    """The default work folder: beside the output, so it is on the same (shared, on a cluster) file system."""
    out = Path(out_dir).expanduser().resolve()
    return out.with_name(out.name + ".datatrove")


def _part(parts: Path, split: str, index: int) -> tuple[Path, Path]:
    return parts / f"{split}_{index:06d}.bin", parts / f"{split}_{index:06d}.json"


def _task_slice(n: int, tasks: int, rank: int) -> range:
    """Task ``rank``'s contiguous share of ``n`` ranges (shares differ by at most one)."""
    return range(rank * n // tasks, (rank + 1) * n // tasks)


def _steps() -> tuple[type, type]:
    """The two datatrove steps, defined once datatrove is known to be installed (it is an extra)."""
    from datatrove.pipeline.base import PipelineStep

    class EncodeRanges(PipelineStep):
        """Task ``rank`` encodes its slice of the ranges into part files; a range whose part is already there
        (a task killed half way) is not encoded again."""

        name = "openllm encode ranges"
        type = "tokenizer"

        def __init__(self, jobs: list[tuple[str, int, Job]], parts: str) -> None:
            super().__init__()
            self.jobs, self.parts = jobs, parts

        def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> Iterator[Any]:
            parts = Path(self.parts)
            for i in _task_slice(len(self.jobs), world_size, rank):
                split, index, job = self.jobs[i]
                bin_path, json_path = _part(parts, split, index)
                if json_path.is_file():
                    continue
                ids, docs, nbytes = encode_range(job)
                write_bytes_atomic(bin_path, ids.tobytes())
                # the counts are written last: their file says the part is whole
                write_json_atomic(json_path, {"documents": docs, "bytes": nbytes, "tokens": len(ids)})
                self.stat_update("documents", value=docs)
                self.stat_update("tokens", value=len(ids))
            yield from ()

    class WriteShards(PipelineStep):
        """The merge (Slurm's second job; local and Ray run it in the calling process)."""

        name = "openllm write shards"
        type = "writer"

        def __init__(self, plan_args: dict[str, Any], out_dir: str, work: str, shard_tokens: int) -> None:
            super().__init__()
            self.plan_args, self.out_dir, self.work, self.shard_tokens = plan_args, out_dir, work, shard_tokens

        def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> Iterator[Any]:
            plan = plan_tokenize(**self.plan_args)
            _merge(plan, self.out_dir, Path(self.work), self.shard_tokens, progress=False)
            shutil.rmtree(Path(self.work) / "parts", ignore_errors=True)
            yield from ()

    return EncodeRanges, WriteShards


def _prepare_steps() -> tuple[type, type]:
    from datatrove.pipeline.base import PipelineStep

    class CleanSources(PipelineStep):
        """Task ``rank`` reads and cleans its slice of the sources (``prepare.clean_documents``): the kept texts
        of source ``i`` go to ``parts/src_i.jsonl``, its counts and stats to ``parts/src_i.json`` (last: the
        part is whole)."""

        name = "openllm clean sources"
        type = "filter"

        def __init__(self, sources: list[Source], opts: dict[str, Any], parts: str) -> None:
            super().__init__()
            self.sources, self.opts, self.parts = sources, opts, parts

        def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> Iterator[Any]:
            parts = Path(self.parts)
            for i in _task_slice(len(self.sources), world_size, rank):
                src = self.sources[i]
                texts_path, counts_path = parts / f"src_{i:06d}.jsonl", parts / f"src_{i:06d}.json"
                if counts_path.is_file():
                    continue
                tally: dict[str, int] = {}
                with atomic_file(texts_path, encoding="utf-8") as f:
                    for text in clean_documents(src, self.opts, tally):
                        f.write(json.dumps(text, ensure_ascii=False) + "\n")
                write_json_atomic(counts_path, {"tally": tally, "stats": src.stats})
                self.stat_update("documents", value=tally["read"])
            yield from ()

    class WritePrepared(PipelineStep):
        """The merge (Slurm's second job; local and Ray run it in the calling process)."""

        name = "openllm write prepared"
        type = "writer"

        def __init__(self, sources: list[Source], opts: dict[str, Any], out_dir: str, work: str) -> None:
            super().__init__()
            self.sources, self.opts, self.out_dir, self.work = sources, opts, out_dir, work

        def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> Iterator[Any]:
            _merge_prepared(self.sources, self.opts, self.out_dir, Path(self.work))
            shutil.rmtree(Path(self.work) / "parts", ignore_errors=True)
            yield from ()

    return CleanSources, WritePrepared


def _merge_prepared(sources: list[Source], opts: dict[str, Any], out_dir: str | os.PathLike, work: Path) -> dict:
    parts = work / "parts"

    def cleaned(i: int, src: Source, tally: dict[str, int]) -> Iterator[str]:
        counts_path = parts / f"src_{i:06d}.json"
        if not counts_path.is_file():
            raise OpenLLMError(
                f"{work}: part {counts_path.name} is missing (a task did not finish); rerun the same command to "
                "finish the remaining tasks"
            )
        saved = json.loads(counts_path.read_text(encoding="utf-8"))
        tally.update(saved["tally"])
        src.stats.clear()
        src.stats.update(saved["stats"])
        with open(parts / f"src_{i:06d}.jsonl", encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)

    return write_prepared(sources, out_dir, opts, cleaned)


def prepare_on_engine(
    inputs: Sequence[str | os.PathLike] | None,
    out_dir: str | os.PathLike,
    *,
    executor: str = "local",
    workers: int | None = None,
    tasks: int | None = None,
    work_dir: str | os.PathLike | None = None,
    slurm: dict[str, Any] | None = None,
    keep_work: bool = False,
    **options: Any,
) -> dict[str, Any] | None:
    """:func:`openllm.prepare.prepare_corpus` as a datatrove pipeline: tasks read and clean the sources (a
    source, one file, is the unit of work), the merge deduplicates, splits and writes in source order, so the
    folder is byte-identical to ``prepare_corpus``'s. ``options``: prepare_corpus's (``field``, ``min_chars``,
    ...). Returns the report (Slurm: None, as :func:`tokenize_on_engine`)."""
    _check_args(executor, tasks, slurm)
    opts = prepare_options(**options)
    sources = resolve_for_output(inputs, out_dir)
    n_tasks = min(tasks or len(sources), len(sources))
    n_workers = max(1, min(workers or os.cpu_count() or 1, n_tasks))
    files = []
    for src in sources:
        st = src.path.stat() if src.path is not None and src.path.is_file() else None
        files.append([src.kind, src.name, st.st_size if st else None, st.st_mtime_ns if st else None])
    work = Path(work_dir).expanduser().resolve() if work_dir else work_dir_for(out_dir)
    _open_work(work, json.loads(json.dumps({"prepare": opts, "sources": files, "tasks": n_tasks})))
    (work / "parts").mkdir(exist_ok=True)
    CleanSources, WritePrepared = _prepare_steps()
    step = CleanSources(sources, opts, str(work / "parts"))
    merge = WritePrepared(sources, opts, str(Path(out_dir).expanduser().resolve()), str(work))
    if not _execute(executor, step, merge, n_tasks, n_workers, work, slurm, "openllm-prepare"):
        return None
    report = _merge_prepared(sources, opts, out_dir, work)
    if not keep_work:
        shutil.rmtree(work)
    return report


def _merge(plan: TokenizePlan, out_dir: str | os.PathLike, work: Path, shard_tokens: int, progress: bool) -> dict:
    parts = work / "parts"

    def encoded(jobs: list[Job]) -> Iterator[tuple[np.ndarray, int, int]]:
        split = next(s for s, js in plan.jobs.items() if js is jobs)
        for index in range(len(jobs)):
            bin_path, json_path = _part(parts, split, index)
            if not json_path.is_file():
                raise OpenLLMError(
                    f"{work}: part {json_path.name} is missing (a task did not finish); rerun the same command to "
                    "finish the remaining tasks"
                )
            counts = json.loads(json_path.read_text(encoding="utf-8"))
            yield np.fromfile(bin_path, dtype=plan.dtype), counts["documents"], counts["bytes"]

    return write_tokenized(plan, out_dir, encoded, shard_tokens=shard_tokens, progress=progress)


def _fingerprint(plan: TokenizePlan, tasks: int) -> dict[str, Any]:
    """What the part files depend on: a rerun with anything else must not reuse them."""
    files = {}
    for jobs in plan.jobs.values():
        for job in jobs[:1]:
            st = Path(job[1]).stat()
            files[job[1]] = [st.st_size, st.st_mtime_ns]
    return {
        "tokenizer_sha256": plan.tok.sha256,
        "files": files,
        "ranges": {split: [list(job[2:4]) for job in jobs] for split, jobs in plan.jobs.items()},
        "dtype": plan.dtype,
        "tasks": tasks,
    }


def _open_work(work: Path, fingerprint: dict[str, Any]) -> None:
    """Keep ``work`` when it holds parts of this same job, start it over when of another, refuse a folder that is
    not a work folder."""
    plan_file = work / PLAN_FILE
    if work.exists():
        if not plan_file.is_file():
            if any(work.iterdir()):
                raise OpenLLMError(
                    f"work folder {work} exists and is not an openllm datatrove work folder; give another --work-dir"
                )
        elif json.loads(plan_file.read_text(encoding="utf-8")) != fingerprint:
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    if not plan_file.is_file():
        write_json_atomic(plan_file, fingerprint)


def tokenize_on_engine(
    data_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    executor: str = "local",
    workers: int | None = None,
    tasks: int | None = None,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    chunk_bytes: int | None = None,
    work_dir: str | os.PathLike | None = None,
    slurm: dict[str, Any] | None = None,
    keep_work: bool = False,
    progress: bool = True,
) -> dict[str, Any] | None:
    """:func:`openllm.shards.tokenize_corpus` as a datatrove pipeline on ``executor`` (local, ray, slurm).

    ``workers``: tasks run at once (and, as for ``tokenize_corpus``, what sizes the byte ranges). ``tasks``: how
    many datatrove tasks share the ranges (default: one per range). Returns the ``meta.json`` dict; for Slurm,
    None: the jobs are submitted (encode array, then the merge after it) and the output appears when they end.
    ``slurm``: :class:`datatrove.executor.SlurmPipelineExecutor` arguments (``partition``, ``time``, ...).
    Ray: joins the cluster ``RAY_ADDRESS`` names, or one already initialised in this process, else starts a
    local one with ``workers`` CPUs. ``keep_work``: leave the work folder (parts, datatrove's logs and stats).
    """
    _check_args(executor, tasks, slurm)
    plan_args: dict[str, Any] = {
        "data_dir": str(Path(data_dir).expanduser().resolve()),
        "tokenizer_dir": str(Path(tokenizer_dir).expanduser().resolve()),
        "workers": workers,
        "shard_tokens": shard_tokens,
        "chunk_bytes": chunk_bytes,
    }
    plan = plan_tokenize(**plan_args)
    plan_args["chunk_bytes"] = plan.chunk_bytes  # the merge job plans again, maybe where os.cpu_count() differs
    all_jobs = [(split, index, job) for split, jobs in plan.jobs.items() for index, job in enumerate(jobs)]
    n_tasks = min(tasks or len(all_jobs), len(all_jobs))
    work = Path(work_dir).expanduser().resolve() if work_dir else work_dir_for(out_dir)
    _open_work(work, _fingerprint(plan, n_tasks))
    (work / "parts").mkdir(exist_ok=True)
    EncodeRanges, WriteShards = _steps()
    encode = EncodeRanges(all_jobs, str(work / "parts"))
    merge = WriteShards(plan_args, str(Path(out_dir).expanduser().resolve()), str(work), shard_tokens)
    if not _execute(executor, encode, merge, n_tasks, plan.workers, work, slurm, "openllm-tokenize"):
        return None
    meta = _merge(plan, out_dir, work, shard_tokens, progress)
    if not keep_work:
        shutil.rmtree(work)
    return meta


def _check_args(executor: str, tasks: int | None, slurm: dict[str, Any] | None) -> None:
    if executor not in EXECUTORS:
        raise OpenLLMError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    require("datatrove", what="--executor")
    if executor == "ray":
        require("ray", what="--executor ray")
    if tasks is not None and tasks < 1:
        raise OpenLLMError(f"--tasks must be at least 1, got {tasks}")
    if executor == "slurm" and not ((slurm or {}).get("partition") and (slurm or {}).get("time")):
        raise OpenLLMError("--executor slurm needs --slurm-partition NAME and --slurm-time HH:MM:SS")


def _execute(
    executor: str,
    step: Any,
    merge: Any,
    n_tasks: int,
    n_workers: int,
    work: Path,
    slurm: dict[str, Any] | None,
    job_name: str,
) -> bool:
    """Run ``step`` as ``n_tasks`` datatrove tasks on ``executor``; True when they all finished here (the caller
    then merges), False when Slurm jobs were submitted (``merge`` is the second job, after the array)."""
    logs = str(work / "logs")
    if executor == "local":
        from datatrove.executor import LocalPipelineExecutor

        # fork: the workers run SentencePiece, numpy and the text cleaning, never torch (as tokenize_corpus's pool)
        LocalPipelineExecutor([step], tasks=n_tasks, workers=n_workers, logging_dir=logs, start_method="fork").run()
    elif executor == "ray":
        _run_ray(step, n_tasks, n_workers, logs)
    else:
        from datatrove.executor import SlurmPipelineExecutor

        opts = {"job_name": job_name, **(slurm or {})}
        first = SlurmPipelineExecutor([step], tasks=n_tasks, logging_dir=logs, **opts)
        merge_opts = {**opts, "job_name": opts["job_name"] + "-merge"}
        SlurmPipelineExecutor([merge], tasks=1, logging_dir=str(work / "merge-logs"), depends=first, **merge_opts).run()
        return False
    missing = [str(r) for r in range(n_tasks) if not (work / "logs" / "completions" / f"{r:05d}").is_file()]
    if missing:
        raise OpenLLMError(
            f"datatrove tasks {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''} did not finish (logs in "
            f"{work / 'logs'}); rerun the same command to finish them"
        )
    return True


def _run_ray(encode: Any, n_tasks: int, n_workers: int, logs: str) -> None:
    import ray
    from datatrove.executor import RayPipelineExecutor

    started = False
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(log_to_driver=False)
        else:
            ray.init(num_cpus=n_workers, include_dashboard=False, log_to_driver=False)
        started = True
    try:
        # a range is a few MB of text: a small memory reservation lets every CPU take a task
        RayPipelineExecutor(
            [encode], tasks=n_tasks, workers=n_workers, logging_dir=logs, cpus_per_task=1, mem_per_cpu_gb=0.5
        ).run()
    finally:
        if started:
            ray.shutdown()
