"""upload_dataset on a real local hub: one commit whose tree is exactly the data, a dataset card and
SHA256SUMS; the upload replaces what the repo held (except .gitattributes); the card counts what was there."""

from __future__ import annotations

import hashlib
import json

import pytest
from huggingface_hub import DatasetCard

from openllm.hub import CommitOperationAdd, LocalHub
from openllm.publish.datasets import upload_dataset


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["prepared", "tokenized", "file"])
def test_upload_dataset_to_local_hub(tmp_path, kind):
    src = tmp_path / kind
    src.mkdir()
    if kind == "prepared":
        (src / "train.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c"}\n')
        (src / "val.jsonl").write_text('{"text": "d"}\n')
        (src / "report.json").write_text(
            json.dumps({"sources": [{"name": "/abs/kjv.txt", "kind": "txt"}], "documents": 4})
        )
        (src / "report.md").write_text("# Report\n\n4 documents kept\n\n- /abs/kjv.txt (txt)\n- C:\\abs\\b.txt\n")
    elif kind == "tokenized":
        (src / "train_000.bin").write_bytes(b"\x01\x00" * 50)
        (src / "tokenizer").mkdir()
        (src / "tokenizer" / "tokenizer.model").write_bytes(b"sp")
        (src / "meta.json").write_text(
            json.dumps(
                {
                    "vocab_size": 512,
                    "dtype": "uint16",
                    "splits": {"train": {"tokens": 50, "documents": 5}, "val": {"tokens": 0, "documents": 0}},
                }
            )
        )
    else:
        src = src / "corpus.txt"
        src.write_text("line one\nline two\n")
    hub = LocalHub(root=tmp_path / "hub")
    hub.create_repo(repo_id="alice/corpus", repo_type="dataset")
    hub.create_commit(
        repo_id="alice/corpus",
        repo_type="dataset",
        commit_message="before",
        operations=[
            CommitOperationAdd(".gitattributes", b"*.bin binary\n"),
            CommitOperationAdd("stale[1].txt", b"old"),
        ],
    )
    res = upload_dataset(src, repo_id="alice/corpus", hub=hub, license="cc0-1.0", version="v1")
    files = hub.list_files(repo_id="alice/corpus", repo_type="dataset", revision="v1")
    assert "README.md" in files and "SHA256SUMS" in files
    # the upload replaces the repo's files, but keeps .gitattributes (the Hugging Face hub's LFS rules)
    assert ".gitattributes" in files and "stale[1].txt" not in files
    files.remove(".gitattributes")
    out = hub.download(repo_id="alice/corpus", repo_type="dataset", revision="v1", local_dir=tmp_path / "dl")
    card = DatasetCard((out / "README.md").read_text())
    assert card.data.license == "cc0-1.0"
    sums = dict(reversed(line.split("  ", 1)) for line in (out / "SHA256SUMS").read_text().splitlines())
    for name, digest in sums.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
        assert digest in card.text
    if kind == "prepared":
        assert sorted(sums) == ["report.json", "report.md", "train.jsonl", "val.jsonl"]
        assert (
            "kjv.txt" in card.text
            and "/abs/" not in card.text
            and "\\abs\\" not in card.text
            and "- kjv.txt (txt)" in card.text
            and "4 documents kept" in card.text
            and res.stats["documents"] == 4
        )
    elif kind == "tokenized":
        assert "tokenizer/tokenizer.model" in sums and res.stats["tokens"] == 50 and "| tokens | 50 |" in card.text
    else:
        assert sorted(sums) == ["corpus.txt"] and res.stats["lines"] == 2


def _refs(hub, repo_id, repo_type="dataset"):
    refs = hub.list_refs(repo_id=repo_id, repo_type=repo_type)
    return refs.branches, refs.tags


def test_a_refused_dataset_version_leaves_the_repo_as_it_was(tmp_path):
    from openllm.hub import RevisionExists

    src = tmp_path / "data"
    src.mkdir()
    (src / "train.jsonl").write_text('{"text": "a"}\n')
    hub = LocalHub(root=tmp_path / "hub")
    first = upload_dataset(src, repo_id="alice/corpus", hub=hub, version="v1")
    (src / "train.jsonl").write_text('{"text": "other"}\n')
    before = _refs(hub, "alice/corpus")
    with pytest.raises(RevisionExists) as err:
        upload_dataset(src, repo_id="alice/corpus", hub=hub, version="v1")
    msg = str(err.value)
    assert "already has version v1" in msg and "another --version" in msg
    assert "--force" not in msg  # data upload has no --force to suggest
    assert _refs(hub, "alice/corpus") == before and before[0]["main"] == first.commit


@pytest.mark.parametrize(
    "version, why",
    [
        ("HEAD", "reserved by git"),
        ("main", "reserved by git"),
        ("sync-1-0123456789ab", "Space sync"),
        ("-x", "'-'"),
        ("refs/tags/v1", "'/'"),
    ],
)
def test_reserved_dataset_versions_are_refused_before_the_hub_is_touched(tmp_path, version, why):
    from openllm.hub import InvalidRepoId

    (tmp_path / "c.txt").write_text("x\n")
    hub = LocalHub(root=tmp_path / "hub")
    with pytest.raises(InvalidRepoId, match=why):
        upload_dataset(tmp_path / "c.txt", repo_id="alice/corpus", hub=hub, version=version)
    assert not hub.root.exists()


def test_a_data_folder_with_a_link_out_of_it_is_refused_and_nothing_is_uploaded(tmp_path):
    from openllm.hub import UnsafeUpload

    src = tmp_path / "data"
    src.mkdir()
    (src / "train.jsonl").write_text('{"text": "a"}\n')
    (src / "passwd.txt").symlink_to("/etc/passwd")
    hub = LocalHub(root=tmp_path / "hub")
    with pytest.raises(UnsafeUpload, match=r"passwd.txt is a link to /etc/passwd, outside the folder"):
        upload_dataset(src, repo_id="alice/corpus", hub=hub)
    assert not hub.root.exists()  # refused before the repo was created
    # a link to a file inside the folder is uploaded as that file's content
    (src / "passwd.txt").unlink()
    (src / "copy.jsonl").symlink_to("train.jsonl")
    res = upload_dataset(src, repo_id="alice/corpus", hub=hub)
    out = hub.download(repo_id="alice/corpus", repo_type="dataset", local_dir=tmp_path / "dl")
    assert (out / "copy.jsonl").read_text() == '{"text": "a"}\n' and not (out / "copy.jsonl").is_symlink()
    assert "copy.jsonl" in res.files and "copy.jsonl" in (out / "SHA256SUMS").read_text()
