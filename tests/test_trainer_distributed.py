"""rmm-train on several processes (remixmatch.trainer.distributed): CPU gloo workers spawned by
torch's elastic agent (``--device cpu --procs N``), the same code as ``--gpus N`` with NCCL.

Every multi-process run is a subprocess with a hard timeout, so a hang fails its test."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from remixmatch.trainer.checkpoint import checkpoint_paths
from remixmatch.trainer.config import TrainConfig
from remixmatch.trainer.distributed import (
    EXIT_WORKER_FAILED, World, check_divisible, make_launch_config, plan_world, root_cause, uses_rotation_head,
)
from remixmatch.trainer.model import WideResNet
from remixmatch.trainer.run import Run
from distributed_helpers import Recorder
from trainer_helpers import (  # noqa: F401  (pipeline_shards is a fixture)
    assert_identical, cli, latest_state, metrics, pipeline_shards, smoke_args, smoke_config,
)

RMM_TRAIN = str(Path(sys.executable).with_name("rmm-train"))
RUN_TIMEOUT_S = 240  # one multi-process run, start to finish, on 2 busy cores
STEPS = 10  # the smoke preset checkpoints every 10 steps
BATCH, UNLABELED = 8, 8  # the smoke preset's global batches


def _env() -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        env.pop(name, None)  # never join an outer group
    return env


def launch(data: Path, out: Path, *extra) -> subprocess.Popen:
    argv = [RMM_TRAIN, *map(str, smoke_args(data, out, quiet=False)), *map(str, extra)]
    return subprocess.Popen(argv, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def launch_recorded(data: Path, out: Path, procs: int, steps: int, dump: Path) -> subprocess.Popen:
    """The smoke run on ``procs`` processes through the launcher, each rank recording its batches and
    writing its final state to ``dump/rank<R>.pt`` (distributed_helpers.train_and_dump)."""
    env = _env()
    tests = str(Path(__file__).resolve().parent)  # the workers import distributed_helpers from here
    env["PYTHONPATH"] = os.pathsep.join(p for p in (tests, env.get("PYTHONPATH")) if p)
    argv = [sys.executable, "-c", "from distributed_helpers import main; main()", data, out, procs, steps, dump]
    return subprocess.Popen(list(map(str, argv)), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = RUN_TIMEOUT_S) -> tuple[int, str]:
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(process.pid)
        process.communicate()
        pytest.fail(f"rmm-train did not finish within {timeout} s (hang)")
    return process.returncode, err


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def kill_tree(pid: int) -> None:
    for child in children(pid):
        kill_tree(child)
    with contextlib.suppress(ProcessLookupError):  # it ended on its own meanwhile
        os.kill(pid, signal.SIGKILL)


def worker_pids(launcher: int) -> list[int]:
    """The launcher's spawned workers (multiprocessing's spawn children, not its resource tracker)."""
    pids = []
    for pid in children(launcher):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "spawn_main" in cmdline:
            pids.append(pid)
    return sorted(pids)


def wait_for(predicate, timeout: float, what: str, process: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if process.poll() is not None:
            pytest.fail(f"rmm-train exited ({process.returncode}) before {what}: {process.stderr.read()[-2000:]}")
        time.sleep(0.1)
    kill_tree(process.pid)
    pytest.fail(f"no {what} within {timeout} s")


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("rmm-train: error:")]


# -- the runs several tests read ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_procs(pipeline_shards, tmp_path_factory):
    """A 10-step smoke run on 2 CPU processes, each rank dumping its final state and batches."""
    root = tmp_path_factory.mktemp("two_procs")
    out, dump = root / "run", root / "dump"
    rc, err = finish(launch_recorded(pipeline_shards.path, out, 2, STEPS, dump))
    assert rc == 0, err[-3000:]
    return out, [torch.load(dump / f"rank{r}.pt", weights_only=False) for r in range(2)], err


@pytest.fixture(scope="module")
def one_proc(pipeline_shards, tmp_path_factory):
    """The same run in one process (in-process Run, batches recorded)."""
    out = tmp_path_factory.mktemp("one_proc") / "run"
    run = Run(smoke_config(pipeline_shards.path, steps=STEPS), out, quiet=True)
    recorder = run.loader = Recorder(run.loader)
    run.train()
    return out, recorder.batches


def test_two_ranks_end_with_identical_weights_and_cta_weights(two_procs):
    out, (rank0, rank1), _ = two_procs
    assert rank0["world_size"] == rank1["world_size"] == 2 and rank0["step"] == rank1["step"] == STEPS
    # parameters and BN statistics of the model and its EMA, bit for bit (the rotation head included:
    # it trains outside the DDP forward, its gradients must still be all-reduced)
    assert_identical(rank0["model"], rank1["model"], "model")
    assert_identical(rank0["ema"], rank1["ema"], "ema")
    np.testing.assert_array_equal(rank0["rates"], rank1["rates"])
    assert not np.all(rank0["rates"] == 1.0)  # CTAugment did learn
    # and what rank 0 checkpointed is that state
    state = latest_state(out)
    assert state["step"] == STEPS
    assert_identical(state["model"], rank1["model"], "checkpoint model")
    assert_identical(state["ema"], rank1["ema"], "checkpoint ema")
    np.testing.assert_array_equal(state["policy"]["rates"], rank1["rates"])
    # the rotation head trained (it moved from its seeded initialisation) and stayed identical: its
    # gradients, computed outside the DDP forward from each rank's own half, were all-reduced
    torch.manual_seed(TrainConfig().run_seed)
    config = smoke_config(Path("unused"))
    init = WideResNet(10, config.width, config.blocks_per_stage, config.bn_momentum,
                      mean=(0.5,) * 3, std=(0.25,) * 3).state_dict()
    for name in ("rotation_head.weight", "rotation_head.bias"):
        assert name in init
        assert not torch.equal(rank0["model"][name], init[name]), name


def test_rank_zero_alone_writes_logs_metrics_checkpoints_and_summary(two_procs):
    out, _, err = two_procs
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == STEPS and summary["device"] == "cpu"
    assert summary["config"]["batch"] == BATCH  # the global batch
    records = metrics(out)
    steps = [r["step"] for r in records if not r.get("eval")]
    assert steps == [5, 10], records  # one line per logged step, not one per rank
    assert [r["step"] for r in records if r.get("eval")] == [10]
    assert [p.name for p in checkpoint_paths(out)] == ["ckpt-00000010.pt"]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("cta_heatmap")) == [
        "checkpoints", "config.json", "cta_weights.txt", "curves.png", "labeled.json", "metrics.jsonl", "summary.json"]
    assert not list((out / "checkpoints").glob(".*"))  # no temporary file left
    assert len(re.findall(r"^step 10/10", err, re.M)) == 1, err
    assert len(re.findall(r"^done: ", err, re.M)) == 1, err
    assert not error_lines(err)


def test_the_same_seed_gives_the_same_global_batches_on_one_and_two_processes(two_procs, one_proc):
    _, ranks, _ = two_procs
    _, single = one_proc
    assert len(single) == len(ranks[0]["batches"]) == len(ranks[1]["batches"]) == STEPS
    for step, whole in enumerate(single):
        parts = [rank["batches"][step] for rank in ranks]
        for name in ("x_rows", "u_rows"):  # the samplers are global at every step
            np.testing.assert_array_equal(np.concatenate([p[name] for p in parts]), whole[name],
                                          err_msg=f"step {step} {name}")
            assert len(parts[0][name]) == len(whole[name]) // 2
        if step < 2:
            # The policies of steps 0 and 1 come from the initial CTAugment weights (prefetch draws
            # step 1's plan before step 0's update) on 1 and 2 processes alike; later ones depend
            # on the probe scores of models that trained on differently split batches.
            for name in ("x", "u_weak"):
                np.testing.assert_array_equal(np.concatenate([p[name] for p in parts]), whole[name],
                                              err_msg=f"step {step} {name}")
            np.testing.assert_array_equal(np.concatenate([p["u_strong"] for p in parts], axis=1), whole["u_strong"],
                                          err_msg=f"step {step} u_strong")


def model_distance(a: dict, b: dict) -> float:
    """|a - b| / |b| over all floating-point tensors of two state dicts, as one vector."""
    names = [n for n, v in b.items() if v.is_floating_point()]
    diff = torch.cat([(a[n] - b[n]).flatten() for n in names])
    return (diff.norm() / torch.cat([b[n].flatten() for n in names]).norm()).item()


def test_with_sync_bn_two_processes_train_like_one_to_float_tolerance(pipeline_shards, tmp_path):
    """One run, any world size: with batch statistics over the global batch (--sync-bn), MixUp over
    the global batch and rotation labels by global row, 2 ranks compute the 1-process update. Not bit
    for bit: the all-reduced gradients and BN sums are added in another order, and Adam amplifies
    that rounding for weights whose gradient is near zero (a single BN bias can differ by a few %),
    so the runs are short (4 steps) and the whole model is compared as one vector."""
    steps = 4
    runs = {}
    for procs in (1, 2):
        out = tmp_path / f"run{procs}"
        extra = ("--procs", procs) if procs > 1 else ()
        rc, err = finish(launch(pipeline_shards.path, out, *extra, "--steps", steps, "--sync-bn", "--threads", 1))
        assert rc == 0, err[-3000:]
        runs[procs] = latest_state(out)
    single, double = runs[1], runs[2]
    assert single["step"] == double["step"] == steps
    # measured here: 8e-4 with --sync-bn, 1.4e-2 without
    assert model_distance(double["model"], single["model"]) < 4e-3
    # the probe scores agree too, so CTAugment learned the same weights
    np.testing.assert_allclose(double["policy"]["rates"], single["policy"]["rates"], atol=1e-4)
    # without --sync-bn each rank normalises its own half: a different update, which the check above sees
    out = tmp_path / "per_rank"
    rc, err = finish(launch(pipeline_shards.path, out, "--procs", 2, "--steps", steps, "--threads", 1))
    assert rc == 0, err[-3000:]
    worst = model_distance(latest_state(out)["model"], single["model"])
    assert worst > 4e-3


def test_fixmatch_with_sync_bn_on_two_processes_trains_like_one_to_the_same_tolerance(pipeline_shards, tmp_path):
    """FixMatch gathers nothing across ranks (every term is a mean over the rank's rows): with
    --sync-bn, 2 ranks compute the 1-process update within the ReMixMatch test's tolerance."""
    steps = 4
    runs = {}
    for procs in (1, 2):
        out = tmp_path / f"run{procs}"
        extra = ("--procs", procs) if procs > 1 else ()
        rc, err = finish(launch(pipeline_shards.path, out, *extra, "--algorithm", "fixmatch", "--steps", steps,
                                "--ckpt-every", steps, "--sync-bn", "--threads", 1))
        assert rc == 0, err[-3000:]
        runs[procs] = latest_state(out)
    single, double = runs[1], runs[2]
    assert single["step"] == double["step"] == steps and single["config"]["algorithm"] == "fixmatch"
    assert model_distance(double["model"], single["model"]) < 4e-3
    np.testing.assert_allclose(double["policy"]["rates"], single["policy"]["rates"], atol=1e-4)
    assert not np.array_equal(single["policy"]["rates"], np.ones_like(single["policy"]["rates"]))


# -- elastic resume: the sampler positions are global -------------------------------------------------------


def check_resumed(out: Path, world_size: int) -> None:
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 * STEPS and summary["world_size"] == world_size
    state = latest_state(out)
    assert state["step"] == 2 * STEPS and checkpoint_paths(out)[-1].name == f"ckpt-{2 * STEPS:08d}.pt"
    assert state["loader"]["step"] == 2 * STEPS
    assert state["loader"]["labeled"]["position"] == 2 * STEPS * BATCH + BATCH  # + the prefetched plan
    assert state["loader"]["unlabeled"]["position"] == 2 * STEPS * UNLABELED + UNLABELED
    assert state["loader"]["pending_plan"] is not None
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    records = metrics(out)
    assert [r["step"] for r in records if not r.get("eval")] == [5, 10, 15, 20]
    assert [r["step"] for r in records if r.get("eval")] == [10, 20]


def test_two_process_checkpoint_resumes_on_one_process(two_procs, pipeline_shards, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(two_procs[0], out)
    Run(smoke_config(pipeline_shards.path, steps=2 * STEPS), out, resume=True, quiet=True).train()
    check_resumed(out, world_size=1)


def test_one_process_checkpoint_resumes_on_two_processes(one_proc, pipeline_shards, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(one_proc[0], out)
    rc, err = finish(launch(pipeline_shards.path, out, "--procs", 2, "--steps", 2 * STEPS, "--resume"))
    assert rc == 0, err[-3000:]
    assert "resuming from" in err and err.count("resuming from") == 1
    check_resumed(out, world_size=2)


# -- faults ------------------------------------------------------------------------------------------------


def test_a_killed_worker_brings_the_run_down_naming_its_rank(pipeline_shards, tmp_path):
    process = launch(pipeline_shards.path, tmp_path / "run", "--procs", 2, "--steps", 100000)
    try:
        pids = wait_for(lambda: len(worker_pids(process.pid)) == 2 and worker_pids(process.pid), 120,
                        "two worker processes", process)
        wait_for(lambda: (tmp_path / "run" / "metrics.jsonl").exists(), 180, "a first metrics line", process)
        os.kill(pids[1], signal.SIGKILL)
        killed_at = time.monotonic()
        rc, err = finish(process, timeout=60)
    finally:
        kill_tree(process.pid)
    assert time.monotonic() - killed_at < 60
    assert rc == EXIT_WORKER_FAILED
    lines = error_lines(err)
    assert len(lines) == 1 and re.fullmatch(
        rf"rmm-train: error: rank [01]: worker process {pids[1]} died of SIGKILL; the whole group was stopped",
        lines[0]), err[-3000:]
    assert err.rstrip().splitlines()[-1] == lines[0]
    assert not any(Path(f"/proc/{pid}").exists() and "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()
                   for pid in pids)


def test_max_restarts_recovers_from_a_killed_worker_and_finishes(pipeline_shards, tmp_path):
    out = tmp_path / "run"
    steps = 3 * STEPS
    process = launch(pipeline_shards.path, out, "--procs", 2, "--steps", steps, "--max-restarts", 1)
    try:
        wait_for(lambda: checkpoint_paths(out), RUN_TIMEOUT_S, "a first checkpoint", process)
        pids = worker_pids(process.pid)
        assert len(pids) == 2, pids
        os.kill(pids[0], signal.SIGKILL)
        rc, err = finish(process)
    finally:
        kill_tree(process.pid)
    assert rc == 0, err[-3000:]
    assert re.search(r"resuming from \S+ckpt-000000[12]0\.pt", err), err[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == steps and summary["world_size"] == 2
    assert latest_state(out)["step"] == steps
    records = metrics(out)
    assert [r["step"] for r in records if not r.get("eval")] == list(range(5, steps + 1, 5))
    assert [r["step"] for r in records if r.get("eval")] == [10, 20, 30]


def test_an_error_inside_a_worker_is_one_line_with_its_rank_and_exit_code(pipeline_shards, tmp_path):
    out = tmp_path / "run"
    # supervised: DDP with find_unused_parameters (the rotation head gets no gradient)
    rc, err = finish(launch(pipeline_shards.path, out, "--procs", 2, "--algorithm", "supervised",
                            "--lr", "1e30", "--max-restarts", 1))
    assert rc == 3, err[-3000:]
    lines = error_lines(err)
    assert len(lines) == 1 and re.match(r"rmm-train: error: rank [01]: step \d+: .* Last good checkpoint", lines[0]), err
    assert err.rstrip().splitlines()[-1] == lines[0]
    assert "Traceback" not in err
    assert err.count("resuming") == 0  # a divergence is not retried


# -- refusals, before anything starts -----------------------------------------------------------------------


@pytest.mark.parametrize("extra, expected", [
    (("--procs", "3"), r"--batch 8 does not split over 3 processes.*world size 3"),
    (("--gpus", "2", "--device", "auto"), r"--gpus 2: only 0 CUDA devices are visible"),
    (("--gpus", "2"), r"--gpus 2 runs process r on cuda:r; it contradicts --device cpu"),
    (("--gpus", "1", "--procs", "2"), r"--gpus and --procs contradict each other"),
    (("--procs", "2", "--device", "cuda"), r"--procs 2 runs CPU processes; it contradicts --device cuda"),
    (("--max-restarts", "1",), r"--max-restarts needs --gpus N or --procs N"),
    (("--procs", "0",), r"--procs must be at least 1, got 0"),
])
def test_refused_configurations(pipeline_shards, tmp_path, capsys, monkeypatch, extra, expected):
    if torch.cuda.device_count():
        pytest.skip("this machine has CUDA devices")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "run"
    rc, stdout, err = cli([*smoke_args(pipeline_shards.path, out), *extra], capsys)
    assert rc == 2 and not stdout
    assert err.count("\n") == 1 and re.match(rf"rmm-train: error: {expected}", err), err
    assert not out.exists()  # nothing started


def test_world_planning_under_torchrun_and_the_ddp_choice():
    config = TrainConfig(batch=8, device="auto")
    env = {"rank": 3, "world_size": 4, "local_rank": 1, "local_world_size": 2}
    world, resolved = plan_world(config.replace(device="cpu"), None, None, None, env=env)
    assert (world.mode, world.nprocs, world.world_size, world.cuda, resolved.device) == ("torchrun", 2, 4, False, "cpu")
    with pytest.raises(Exception, match=r"--procs 3 contradicts torchrun's 2 processes per node"):
        plan_world(config.replace(device="cpu"), None, 3, None, env=env)
    with pytest.raises(Exception, match=r"--batch 6 does not split over 4 processes"):
        plan_world(config.replace(device="cpu", batch=6), None, None, None, env=env)
    with pytest.raises(Exception, match=r"--max-restarts has no effect under torchrun"):
        plan_world(config.replace(device="cpu"), None, None, 2, env=env)
    assert plan_world(config, None, None, None, env=None)[0] is None or os.environ.get("RANK")
    check_divisible(TrainConfig(batch=8, uratio=7), 4)
    # find_unused_parameters is True exactly when no loss reaches the rotation head
    assert uses_rotation_head(TrainConfig())
    assert uses_rotation_head(TrainConfig(w_rot=0.0))  # the pre-mixup loss still runs strong view 1 through it
    assert not uses_rotation_head(TrainConfig(algorithm="supervised"))
    assert not uses_rotation_head(TrainConfig(k=0, w_kl=0.0, w_rot=0.0))
    assert not uses_rotation_head(TrainConfig(w_kl=0.0, w_rot=0.0))


def test_root_cause_prefers_a_known_error_then_a_signal(tmp_path):
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    def failure(rank, pid, exitcode):
        return ProcessFailure(local_rank=rank, pid=pid, exitcode=exitcode, error_file="<N/A>")

    (tmp_path / "rank1-11.txt").write_text("3\nstep 4: loss term total is nan\n")
    (tmp_path / "rank0-10.txt").write_text("1\nRuntimeError: Connection closed by peer\nTraceback ...\n")
    assert root_cause({0: failure(0, 10, 1), 1: failure(1, 11, 3)}, tmp_path)[:3] == (
        1, 3, "step 4: loss term total is nan")
    rank, code, message, _ = root_cause({0: failure(0, 10, 1), 1: failure(1, 12, -9)}, tmp_path)
    assert (rank, code) == (1, EXIT_WORKER_FAILED) and "died of SIGKILL" in message


def test_under_torchrun_rmm_train_joins_its_group_and_trains_the_same(two_procs, pipeline_shards, tmp_path):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    argv = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc-per-node", "2", "--no-python",
            RMM_TRAIN, *map(str, smoke_args(pipeline_shards.path, out)), "--steps", str(STEPS)]
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"torchrun did not finish within {RUN_TIMEOUT_S} s (hang)")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2
    mine, launched = latest_state(out), latest_state(two_procs[0])
    for key in ("step", "model", "ema", "optimizer", "policy", "distribution_alignment", "loader", "evaluations"):
        assert_identical(mine[key], launched[key], key)


def test_launch_config_builds_on_a_torch_without_shutdown_timeout():
    """torch 2.11's LaunchConfig has no shutdown_timeout: passing it raised TypeError before any worker."""
    import dataclasses

    from torch.distributed.launcher.api import LaunchConfig

    older = dataclasses.make_dataclass("LaunchConfig", [
        (f.name, f.type, dataclasses.field(default=f.default, default_factory=f.default_factory))
        for f in dataclasses.fields(LaunchConfig) if f.name != "shutdown_timeout"])
    world = World("launch", 2, False, 2, max_restarts=1)
    built = make_launch_config(older, world)
    assert built.nproc_per_node == 2 and built.max_restarts == 1 and not hasattr(built, "shutdown_timeout")
    current = make_launch_config(LaunchConfig, world)
    assert current.nproc_per_node == 2
    if "shutdown_timeout" in {f.name for f in dataclasses.fields(LaunchConfig)}:
        assert current.shutdown_timeout == 10
