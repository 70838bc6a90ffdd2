"""openllm.app.workspace: the one folder the app reads and writes."""

from __future__ import annotations

import pytest

from openllm.app.workspace import Workspace, WorkspaceError


@pytest.mark.parametrize(
    "where, says",
    [("file", "is not a folder"), ("file/sub", r"cannot be made \(Not a directory\)"), ("/proc/1", "cannot be made")],
)
def test_a_workspace_that_cannot_be_a_folder_is_one_line_saying_what_to_give(tmp_path, where, says):
    """OPENLLM_WORKSPACE at a file, under a file or on /proc ended `openllm app` as "this is a bug" (issue 24)."""
    (tmp_path / "file").write_text("x")
    root = tmp_path / where if not where.startswith("/") else where
    with pytest.raises(WorkspaceError, match=says) as info:
        Workspace(root)
    assert str(info.value).endswith("a folder the app can create and write") and "\n" not in str(info.value)
    assert (tmp_path / "file").read_text() == "x"


def test_a_workspace_is_made_with_its_folders(tmp_path):
    ws = Workspace(tmp_path / "a" / "b")
    assert all((ws.root / sub).is_dir() for sub in Workspace.SUBDIRS)
