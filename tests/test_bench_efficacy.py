"""``rmm-bench efficacy``: a tiny run (two variants, a few steps, a tiny model on synthetic shards)
writes a well-formed report and markdown, a second call with the same --out reuses its runs, and bad
input fails with one line. Accuracies on random-noise shards mean nothing: only their form is tested.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pipeline_helpers import N_LABELED, pipeline_shards  # noqa: F401 (a fixture)
from remixmatch.bench import efficacy
from remixmatch.bench.cli import DELEGATED, main

TOP_KEYS = {"schema_version", "command", "created", "wall_seconds", "machine", "conditions", "versions", "threads",
            "config", "inputs", "summary", "results"}
ROW_KEYS = {"variant", "seed", "what", "run_dir", "acc_ema_median", "acc_ema_best", "acc_raw_median", "median_of",
            "wall_seconds", "steps"}
STEPS = 4
VARIANTS = ["remixmatch", "supervised"]


def tiny_args(shards, out, *extra) -> list[str]:
    return ["efficacy", "--shards", str(shards), "--out", str(out), "--variants", *VARIANTS, "--steps", str(STEPS),
            "--width", "8", "--blocks-per-stage", "1", "--batch", "4", "--k", "2", "--evaluations", "2",
            "--median-of", "1", "--labels", str(N_LABELED), "--threads", "1", *extra]


@pytest.fixture(scope="module")
def tiny_run(pipeline_shards, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("efficacy")
    threads = torch.get_num_threads()
    try:
        assert main(tiny_args(pipeline_shards.path, out)) == 0
    finally:
        torch.set_num_threads(threads)  # Run sets the process's torch threads
    return out, json.loads((out / "report.json").read_text())


def test_efficacy_is_registered():
    assert DELEGATED["efficacy"][0] == "remixmatch.bench.efficacy"
    import remixmatch.bench.cli as cli

    for name in ("aug", *DELEGATED):
        assert f"``{name}``" in cli.__doc__, f"the cli docstring lists {name}"


def test_report_is_well_formed(tiny_run):
    out, rep = tiny_run
    assert TOP_KEYS <= rep.keys() and rep["command"] == "efficacy" and rep["schema_version"] == 1
    assert rep["config"]["variants"] == VARIANTS and rep["config"]["seeds"] == [1]
    settings = rep["config"]["settings"]
    assert (settings["steps"], settings["width"], settings["batch"], settings["k"]) == (STEPS, 8, 4, 2)
    assert settings["eval_every"] == STEPS // 2 and settings["threads"] == 1
    # A checkpoint every tenth of the run (at least every step), so an interrupted report resumes its runs.
    assert settings["ckpt_every"] == max(1, STEPS // 10)
    assert rep["inputs"]["shards"] == "shards" and rep["inputs"]["dataset"] == "cifar10"
    assert rep["threads"] == {"torch": 1} and rep["machine"]["cpu_count"] >= 1
    assert rep["wall_seconds"] > 0 and rep["created"]
    assert rep["conditions"]["other_cpu_share"] is None or rep["conditions"]["other_cpu_share"] >= 0
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "report.json", "report.md", "runs"]
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["remixmatch-seed1", "supervised-seed1"]


def test_rows_and_summary(tiny_run):
    _, rep = tiny_run
    rows = rep["results"]
    assert [r["variant"] for r in rows] == VARIANTS
    for r in rows:
        assert ROW_KEYS <= r.keys() and r["seed"] == 1 and r["steps"] == STEPS and r["median_of"] == 1
        assert r["what"] == efficacy.VARIANTS[r["variant"]][0]
        for key in ("acc_ema_median", "acc_ema_best", "acc_raw_median"):
            assert 0 <= r[key] <= 1
        assert r["acc_ema_best"] >= r["acc_ema_median"] and r["wall_seconds"] > 0
        summary = json.loads((Path(r["run_dir"]) / "summary.json").read_text())
        assert summary["algorithm"] == ("supervised" if r["variant"] == "supervised" else "remixmatch")
    summary = rep["summary"]
    assert summary.keys() == set(VARIANTS)
    assert summary["remixmatch"]["vs_remixmatch"] is None and summary["remixmatch"]["seeds"] == 1
    assert summary["remixmatch"]["acc_ema_median_stdev"] is None
    assert math.isclose(summary["supervised"]["vs_remixmatch"], rows[1]["acc_ema_median"] - rows[0]["acc_ema_median"],
                        abs_tol=1e-12)


def test_markdown(tiny_run):
    out, rep = tiny_run
    text = (out / "report.md").read_text()
    assert text.startswith("# ReMixMatch efficacy on this machine")
    assert "| variant | what | EMA acc. % (median of last evals) |" in text
    for r in rep["results"]:
        assert f"| {r['variant']} | {r['what']} | {100 * r['acc_ema_median']:.2f} |" in text
    assert f"{STEPS} steps of 4 labeled" in text and "Machine: " in text and "Conditions: " in text


def test_a_second_call_reuses_the_runs(pipeline_shards, tiny_run):  # noqa: F811
    out, rep = tiny_run
    threads = torch.get_num_threads()
    try:
        assert main(tiny_args(pipeline_shards.path, out)) == 0
    finally:
        torch.set_num_threads(threads)
    again = json.loads((out / "report.json").read_text())
    for a, b in zip(rep["results"], again["results"]):
        assert (a["variant"], a["acc_ema_median"], a["acc_ema_best"], a["steps"]) == \
            (b["variant"], b["acc_ema_median"], b["acc_ema_best"], b["steps"])


def test_algorithms_each_run_with_their_own_settings(pipeline_shards, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    argv = [a for a in tiny_args(pipeline_shards.path, out) if a not in VARIANTS and a != "--variants"]
    argv = [a for i, a in enumerate(argv) if a != "--k" and argv[i - 1] != "--k"]  # each method's own K
    threads = torch.get_num_threads()
    try:
        assert main([*argv, "--algorithms", "fixmatch", "mixmatch", "--variants", "supervised", "mixmatch"]) == 0
    finally:
        torch.set_num_threads(threads)
    rep = json.loads((out / "report.json").read_text())
    assert rep["config"]["variants"] == ["fixmatch", "mixmatch", "supervised"] and "k" not in rep["config"]["settings"]
    rows = {r["variant"]: r for r in rep["results"]}
    assert {name: (r["algorithm"], r["k"], r["uratio"], r["steps"]) for name, r in rows.items()} == {
        "fixmatch": ("fixmatch", 1, 3, STEPS), "mixmatch": ("mixmatch", 2, 1, STEPS), "supervised": ("supervised", 0, 0, STEPS)}
    config = json.loads((Path(rows["fixmatch"]["run_dir"]) / "config.json").read_text())
    assert (config["optimizer"], config["lr_schedule"], config["cutout"], config["steps"]) == ("sgd", "cosine", True, STEPS)
    # the cpu preset's short-run rule at 4 steps: its 10-step floor of memory
    assert (config["schedules"], config["bn_momentum"], config["ema"]) == ("run-length", 0.1, 0.9)
    assert rows["fixmatch"]["schedules"]["ramp_steps"] == STEPS
    mixmatch = json.loads((Path(rows["mixmatch"]["run_dir"]) / "config.json").read_text())
    assert mixmatch["unlabeled_loss"] == "l2" and mixmatch["warmup_kimg"] == STEPS * 4 / 1024  # ramp = the run
    assert rep["summary"].keys() == {"fixmatch", "mixmatch", "supervised"}
    text = (out / "report.md").read_text()
    assert "| minutes | steps | K | mu |" in text
    assert "| variant | schedules | labeled views | ramp steps | EMA decay | BN momentum | CTAugment decay |" in text
    assert "| mixmatch | run-length | weak | 4 | 0.9 | 0.1 | 0.5 |" in text
    assert f"| fixmatch | {rows['fixmatch']['what']} | {100 * rows['fixmatch']['acc_ema_median']:.2f} |" in text


def test_fidelity_variants_run_their_choices(pipeline_shards, tmp_path):  # noqa: F811
    fidelity = ["corrected", "reference", "reference-ops-only", "reference-bn-only"]
    args = tiny_args(pipeline_shards.path, tmp_path / "out")
    args[args.index("--variants") + 1:args.index("--variants") + 1 + len(VARIANTS)] = [",".join(fidelity)]
    threads = torch.get_num_threads()
    try:
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [r["variant"] for r in rep["results"]] == fidelity
    choices = {}
    for r in rep["results"]:
        summary = json.loads((Path(r["run_dir"]) / "summary.json").read_text())
        choices[r["variant"]] = summary["fidelity"]
        assert summary["steps"] == STEPS and summary["labeled"]["n_valid"] == 0  # the same images for all
    assert choices["corrected"] == {"fidelity": "corrected", "cta_semantics": "corrected", "bn_mode": "joint",
                                    "input_scaling": "standardize", "p_data": "labeled", "valid": 0,
                                    "labeled_aug": "weak"}
    assert choices["reference"] == {"fidelity": "reference", "cta_semantics": "reference", "bn_mode": "reference",
                                    "input_scaling": "reference", "p_data": "reference", "valid": 0,
                                    "labeled_aug": "strong"}
    assert choices["reference-ops-only"] == {**choices["corrected"], "cta_semantics": "reference"}
    assert choices["reference-bn-only"] == {**choices["corrected"], "bn_mode": "reference"}
    # The corrected defaults are the baseline of the others.
    summary = rep["summary"]
    assert summary["corrected"]["vs_remixmatch"] is None
    assert math.isclose(summary["reference"]["vs_remixmatch"],
                        summary["reference"]["acc_ema_median_mean"] - summary["corrected"]["acc_ema_median_mean"],
                        abs_tol=1e-12)
    assert "| s / step |" in (tmp_path / "out" / "report.md").read_text()


# ---- bad input ----------------------------------------------------------------------------------------

def _one_line_error(capsys, argv, fragment, status=2):
    assert main(argv) == status
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("rmm-bench efficacy: error:") and fragment in err[-1], err
    return err


def test_missing_shards_is_one_line(tmp_path, capsys):
    err = _one_line_error(capsys, tiny_args(tmp_path / "absent", tmp_path / "out"), "absent")
    assert len(err) == 1 and not (tmp_path / "out").exists()


def test_directory_without_manifest_is_one_line(tmp_path, capsys):
    err = _one_line_error(capsys, tiny_args(tmp_path, tmp_path / "out"), "manifest.json")
    assert len(err) == 1 and not (tmp_path / "out").exists()


def test_out_that_is_a_file_is_one_line(pipeline_shards, tmp_path, capsys):  # noqa: F811
    target = tmp_path / "file"
    target.write_text("x")
    err = _one_line_error(capsys, tiny_args(pipeline_shards.path, target), "not a directory")
    assert len(err) == 1


def test_more_labels_than_the_shards_hold_is_one_line(pipeline_shards, tmp_path, capsys):  # noqa: F811
    # Found when the first run opens its data: after its progress line, one error line, no report.
    _one_line_error(capsys, tiny_args(pipeline_shards.path, tmp_path / "out", "--labels", "100000"), "100000")
    assert not (tmp_path / "out" / "report.json").exists()


@pytest.mark.parametrize("extra, fragment", [
    (["--variants", "nosuch"], "--variants"),
    (["--algorithms", "simclr"], "--algorithms"),
    (["--steps", "0"], "--steps"),
    (["--threads", "-1"], "--threads"),
])
def test_bad_values_are_one_line(pipeline_shards, tmp_path, capsys, extra, fragment):  # noqa: F811
    err = _one_line_error(capsys, tiny_args(pipeline_shards.path, tmp_path / "out", *extra), fragment)
    assert len(err) == 1 and not (tmp_path / "out").exists()


def test_runs_are_drawn_side_by_side(tiny_run):
    out, rep = tiny_run
    assert rep["charts"] == {"curves": "curves.png"}
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for row in rep["results"]:  # each run keeps its own curves too
        assert (Path(row["run_dir"]) / "curves.png").is_file()
