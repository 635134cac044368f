"""Training fails loudly and loses nothing (issue 9, items 8, 9 and 11): a diverged run
stops naming the step and keeps a finite checkpoint, a run folder takes one training at a
time, the command line refuses bad arguments before training, and resuming with more
steps continues the learning-rate schedule without a jump."""

import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

import tinymoe as tm
from tests.test_train import tiny
from tinymoe import train as training
from tinymoe.__main__ import main
from tinymoe.optim import warmup_cosine
from tinymoe.train import Config, RunFolderBusy, RunFolderUnusable, TrainingDiverged, get_config, train


def fault_at(monkeypatch, call: int, fault):
    """Run ``fault(params)`` inside the clip_grad_norm call number ``call`` (1-based: step
    index call - 1), after backward and before the optimiser step."""
    calls = {"n": 0}
    real_clip = training.clip_grad_norm

    def clip_with_fault(params, max_norm):
        params = list(params)
        calls["n"] += 1
        if calls["n"] == call:
            fault(params)
        return real_clip(params, max_norm)

    monkeypatch.setattr(training, "clip_grad_norm", clip_with_fault)


def saved_step(folder):
    return int(tm.load(folder / "checkpoint.npz")["step"])


# ---------------------------------------------------------------- divergence (item 8)


def test_a_nan_gradient_stops_training_at_that_step(tmp_path, monkeypatch):
    def poison_a_gradient(params):
        params[0].grad = np.full_like(params[0].grad, np.nan)

    fault_at(monkeypatch, 6, poison_a_gradient)  # step 5; the loss of step 5 is still finite
    with pytest.raises(TrainingDiverged, match=r"diverged at step 5 \(the gradient norm is nan\)"
                                               r".*from step 4\) is kept"):
        train(tiny("mixtral", steps=10, checkpoint_every=4), tmp_path, progress=False)
    assert saved_step(tmp_path) == 4


def test_nan_weights_never_overwrite_the_last_good_checkpoint(tmp_path, monkeypatch):
    def poison_a_weight(params):  # the update of step 7 makes the weights NaN; step 8 would save them
        params[0].data[...] = np.nan

    fault_at(monkeypatch, 8, poison_a_weight)
    with pytest.raises(TrainingDiverged, match=r"diverged at step 7 \(model/\S+ is not finite after the update\)"
                                               r".*from step 4\) is kept"):
        train(tiny("mixtral", steps=12, checkpoint_every=4), tmp_path, progress=False)
    saved = tm.load(tmp_path / "checkpoint.npz")
    assert int(saved["step"]) == 4
    assert all(np.isfinite(v).all() for v in saved["model"].values())


def test_a_loss_that_explodes_but_stays_finite_ends_with_a_message_naming_the_step(tmp_path, monkeypatch):
    # Before: OverflowError: math range error (math.exp of the validation loss).
    models = []
    real_make_model = training.make_model
    monkeypatch.setattr(training, "make_model", lambda *args: models.append(real_make_model(*args)) or models[-1])

    def blow_up_the_head(params):  # logits in the thousands: a finite loss past exp's range
        models[0].head.weight.data *= np.float32(1e5)

    fault_at(monkeypatch, 3, blow_up_the_head)
    with pytest.raises(TrainingDiverged, match=r"diverged at step 2 \(the validation loss is \S+, so large that "
                                               r"its perplexity exp\(\S+\) overflows\)"):
        train(tiny("mixtral", steps=10, eval_every=3), tmp_path, progress=False)
    assert not (tmp_path / "checkpoint.npz").exists()  # nothing good to keep: nothing written


def test_the_command_line_reports_a_diverged_run_without_a_traceback(tmp_path, monkeypatch):
    fault_at(monkeypatch, 2, lambda params: setattr(params[0], "grad", params[0].grad * np.nan))
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", "switch", "--steps", "4", "--out", str(tmp_path)])
    assert str(exit_info.value) == "python -m tinymoe: switch: training diverged at step 1 (the gradient norm is nan)"


def test_evaluate_reports_an_overflowing_perplexity_as_inf():
    config = tiny("mixtral")
    run_corpus = tm.data.load_corpus(config.corpus, config.corpus_chars)
    model = training.make_model(config, run_corpus.vocab_size)
    model.head.weight.data *= np.float32(1e5)
    result = training.evaluate(model, run_corpus, config)
    assert result["val_loss"] > training.MAX_LOSS and result["perplexity"] == float("inf")


# ------------------------------------------------- the learning rate on resume (item 11)


def test_resuming_with_more_steps_continues_the_saved_schedule_without_a_jump(tmp_path):
    config = tiny("switch", steps=8, warmup=2, checkpoint_every=4)
    train(config, tmp_path, progress=False)
    longer = train(tiny("switch", steps=12, warmup=2, checkpoint_every=4), tmp_path, resume=True, progress=False)
    lrs = [h["lr"] for h in longer.history]
    # the schedule of the 8-step run, then its final rate lr / 10 for the 4 extra steps
    assert lrs == [warmup_cosine(s, config.lr, 2, 8, config.lr / 10) for s in range(12)]
    assert lrs[8:] == [config.lr / 10] * 4
    assert int(tm.load(tmp_path / "checkpoint.npz")["schedule_steps"]) == 8  # kept for the next resume


def test_an_interrupted_run_resumed_with_more_steps_keeps_its_schedule(tmp_path):
    train(tiny("switch", steps=8, warmup=2, checkpoint_every=2), tmp_path, progress=False, stop_after=4)
    resumed = train(tiny("switch", steps=10, warmup=2, checkpoint_every=2), tmp_path, resume=True, progress=False)
    lr = resumed.config.lr
    assert [h["lr"] for h in resumed.history] == [warmup_cosine(s, lr, 2, 8, lr / 10) for s in range(10)]


def test_resuming_with_fewer_steps_than_saved_is_refused(tmp_path):
    train(tiny("switch", steps=6, checkpoint_every=6), tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"is at step 6, past steps=4; give steps >= 6"):
        train(tiny("switch", steps=4, checkpoint_every=6), tmp_path, resume=True, progress=False)


# ---------------------------------------------------------- one run per folder (item 9)

HOLD_THE_LOCK = """
import sys
from tinymoe.train import RunFolderLock
lock = RunFolderLock(sys.argv[1])
print("locked", flush=True)
sys.stdin.read()  # hold it until the test closes our stdin or kills us
"""


@pytest.fixture
def other_process_holding(tmp_path):
    """A second Python process that holds the lock on tmp_path / "run"."""
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(folder)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "locked\n"
    yield folder, holder
    holder.kill()
    holder.wait()


def test_a_second_training_into_a_busy_folder_is_refused_naming_it(other_process_holding):
    folder, holder = other_process_holding
    with pytest.raises(RunFolderBusy, match=rf"run folder {folder} is in use by another training "
                                            rf"\(pid {holder.pid}\)"):
        train(tiny("switch", steps=2), folder, progress=False)
    assert not (folder / "checkpoint.npz").exists()


def test_the_command_line_refuses_a_busy_folder_before_training(other_process_holding, capsys):
    folder, _ = other_process_holding
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", "switch", "--steps", "2", "--out", str(folder)])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert f"--out: the run folder {folder} is in use" in captured.err
    assert "training" not in captured.out


def test_a_lock_left_by_a_killed_process_does_not_block(other_process_holding):
    folder, holder = other_process_holding
    holder.send_signal(signal.SIGKILL)  # no clean-up code runs: the kernel drops the flock
    holder.wait()
    assert (folder / "train.lock").exists()
    train(tiny("switch", steps=2, checkpoint_every=2), folder, progress=False)
    assert saved_step(folder) == 2


def test_the_lock_is_released_when_training_ends_or_fails(tmp_path, monkeypatch):
    train(tiny("switch", steps=2), tmp_path, progress=False)
    fault_at(monkeypatch, 1, lambda params: setattr(params[0], "grad", params[0].grad * np.nan))
    with pytest.raises(TrainingDiverged):
        train(tiny("switch", steps=2), tmp_path, progress=False)
    monkeypatch.undo()
    train(tiny("switch", steps=2), tmp_path, progress=False)  # neither run left the folder locked


# -------------------------------------------------------- the command line (item 11)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], r"argument --steps: must be an integer >= 1, got '0'"),
        (["--steps", "-5"], r"argument --steps: must be an integer >= 1, got '-5'"),
        (["--steps=-1"], r"argument --steps: must be an integer >= 1, got '-1'"),
        (["--steps", "ten"], r"argument --steps: must be an integer >= 1, got 'ten'"),
        (["--steps", "2.5"], r"argument --steps: must be an integer >= 1, got '2.5'"),
        (["--seed", "-1"], r"argument --seed: must be an integer >= 0, got '-1'"),
        (["--seed", "x"], r"argument --seed: must be an integer >= 0, got 'x'"),
        (["--config", "mixtrall"], r"unknown config 'mixtrall'"),
    ],
    ids=["steps=0", "steps<0", "steps=-1", "steps-word", "steps-float", "seed<0", "seed-word", "config"],
)
def test_the_command_line_refuses_bad_arguments_before_training(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert re.search(message, captured.err), captured.err
    assert not (tmp_path / "run").exists()  # refused before the run folder was even made


@pytest.mark.parametrize("kind", ["file", "under-a-file"])
def test_an_unusable_out_is_found_before_training(kind, tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    out = blocker if kind == "file" else blocker / "run"
    with pytest.raises(SystemExit):
        main(["--config", "switch", "--steps", "2", "--out", str(out)])
    captured = capsys.readouterr()
    reason = "is a file, not a folder" if kind == "file" else "Not a directory"
    assert "--out:" in captured.err and str(out) in captured.err and reason in captured.err
    assert "training" not in captured.out
    with pytest.raises(RunFolderUnusable, match=str(out)):  # and train() itself, for API users
        train(tiny("switch", steps=2), out, progress=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_a_folder_we_cannot_write_is_found_before_training(tmp_path):
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(RunFolderUnusable, match=rf"cannot use {tmp_path} as a run folder"):
            train(tiny("switch", steps=2), tmp_path, progress=False)
    finally:
        tmp_path.chmod(0o755)


# -------------------------------------------------------- config arguments (bad input)


@pytest.mark.parametrize(
    "name, value",
    [("steps", 0), ("steps", -5), ("steps", 2.0), ("steps", True), ("batch_size", 0), ("context", "24"),
     ("eval_every", 0), ("checkpoint_every", -1), ("warmup", -1), ("seed", -1), ("lr", 0.0), ("lr", float("nan")),
     ("lr", float("inf")), ("weight_decay", -0.1), ("clip", 0.0), ("model", "gru"), ("corpus", "wiki")],
    ids=lambda v: repr(v),
)
def test_a_config_with_a_bad_value_is_refused_naming_the_field(name, value):
    with pytest.raises(ValueError, match=rf"Config 'mixtral': {name} must be"):
        get_config("mixtral", **{name: value})


def test_train_checks_its_own_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"train: stop_after must be an integer >= 0"):
        train(tiny("switch", steps=2), progress=False, stop_after=-1)
    with pytest.raises(ValueError, match=r"train: resume=True needs out_dir"):
        train(tiny("switch", steps=2), resume=True, progress=False)
    assert Config("mine").steps == 1000  # the defaults themselves pass the checks
