"""The Monitor's commands for a run's tracker dashboards (issue 28)."""

import json

from openllm.app.monitor import Progress, dashboard_commands
from openllm.app.render import run_view
from openllm.app.runner import RunStatus


def test_the_monitor_names_the_dashboards_of_the_runs_trackers(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENLLM_TRACKER_PROJECT", raising=False)
    run = tmp_path / "run"
    run.mkdir()
    assert dashboard_commands(run) == []  # no config yet
    (run / "config.json").write_text(json.dumps({"train": {"report_to": "trackio,tensorboard"}}))
    commands = dashboard_commands(run)
    assert commands == ['trackio show --project "openllm"', f"tensorboard --logdir {run / 'tb'}"]
    (run / "config.json").write_text(json.dumps({"train": {"report_to": "wandb"}}))
    assert dashboard_commands(run) == []  # W&B's dashboard is its website
    (run / "config.json").write_text(json.dumps({"train": {}}))  # a run from before train.report_to
    assert dashboard_commands(run) == [f"tensorboard --logdir {run / 'tb'}"]

    st = RunStatus("run", "training", None, 1, 2, None, None, None, None, False)
    p = Progress(step=1, max_steps=2, fraction=0.5, tokens_per_s=None, eta_s=None, loss=None, val_loss=None, lr=None)
    mem = {"ram": "1 GB", "gpu": "none"}
    page = run_view("run", st, p, 1, [], mem, commands)
    assert 'id="run-dashboards">Dashboards: <code>trackio show --project &quot;openllm&quot;</code>' in page
    assert "run-dashboards" not in run_view("run", st, p, 1, [], mem)
