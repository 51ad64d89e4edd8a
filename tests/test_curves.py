"""oceansar/curves.py: a run's curves.png from log.jsonl. A real training run drawing it is checked in
test_prune_training.py."""

import json
import os
import subprocess
import sys


from oceansar import curves
from oceansar import runlog
from helpers import ENV, ROOT

PNG = b"\x89PNG\r\n\x1a\n"


def fake_log(ln_k=5.0, with_diagnostics=True):
    """Two epochs of 4 iterations, a resume, a curation at the start of epoch 1, kNN after each epoch, a collapse
    warning at iteration 6 and on epoch 1: the record shapes pretrain.py writes."""
    records = []
    for it in range(1, 9):
        loss = ln_k * (1 - 0.02 * it)
        r = {"epoch": (it - 1) // 4, "iteration": it, "loss": loss, "loss_norm": loss / ln_k,
             "teacher_entropy": 3.0 - 0.1 * it, "lr": 1e-4 * it, "wd": 0.04}
        if with_diagnostics:
            r.update(batch_entropy=4.5, kl_teacher_student=0.1 * it, feature_std=0.5, prototypes_in_use=90.0)
            if it == 6:
                r["warning"] = ["one prototype"]
        records.append(r)
        if it == 4:
            records.append({"event": "epoch", "epoch": 0, "iteration": 4, "complete": True, "loss": loss,
                            "loss_norm": loss / ln_k, "knn": {"knn_acc": 0.4}})
            records.append({"event": "resumed", "iteration": 4, "epoch": 1})
    records.append({"event": "epoch", "epoch": 1, "iteration": 8, "complete": True, "loss": 4.0, "loss_norm": 0.8,
                    "curation": {"n_kept": 10}, "warning": "collapse", "knn": {"knn_acc": 0.5}})
    return records


def test_events_are_placed_at_the_iterations_they_happened():
    steps, epochs, curations, resumes, collapsed = curves.run_events(fake_log())
    assert len(steps) == 8 and [r["epoch"] for r in epochs] == [0, 1]
    assert curations == [4]                   # epoch 1 was curated at its start, after iteration 4
    assert resumes == [4] and [(r["iteration"], r["warning"]) for r in collapsed] == [(6, ["one prototype"]),
                                                                                      (8, "collapse")]


def test_panels_follow_the_keys_the_log_has(tmp_path):
    titles = [p[0] for p in curves.present_panels(curves.run_events(fake_log())[0])]
    assert len(titles) == len(curves.PANELS)
    old = [p for p in curves.present_panels(curves.run_events(fake_log(with_diagnostics=False))[0])]
    assert [t for t, _, _ in old] == ["DINO loss", "loss / ln K (1 = uniform collapse)", "teacher entropy (nats)",
                                      "learning rate"]
    assert [k for k, _ in old[2][1]] == ["teacher_entropy"]
    for name, records in (("new", fake_log()), ("old", fake_log(with_diagnostics=False))):
        path = curves.draw(records, str(tmp_path / f"{name}.png"))
        assert open(path, "rb").read(8) == PNG
    assert curves.draw([{"event": "resumed", "iteration": 0}], str(tmp_path / "none.png")) is None
    assert sorted(os.listdir(tmp_path)) == ["new.png", "old.png"]          # no temporary file left behind


def test_cli_redraws_a_live_log_with_a_half_written_last_line(tmp_path):
    lines = [json.dumps(r) for r in fake_log()]
    (tmp_path / "log.jsonl").write_text("\n".join(lines) + '\n{"epoch": 1, "itera')
    assert len(runlog.read(str(tmp_path / "log.jsonl"))) == len(lines)
    proc = subprocess.run([sys.executable, "-m", "oceansar.curves", str(tmp_path)], capture_output=True,
                          text=True, env=ENV, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG
    proc = subprocess.run([sys.executable, "-m", "oceansar.curves", str(tmp_path / "nowhere")],
                          capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
    assert proc.returncode == 2 and "usage" in proc.stderr
