import argparse
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest

import stmcdi
from stmcdi import _io
from stmcdi._cli import build_parser, main
from stmcdi._imputation import nothing_to_fill_message

TINY = ["--epochs", "2", "--n-samples", "2", "--batch-size", "32"]
REMOVED = ["--zero-dispersion 0.25", "--shrink 0.5", "--smooth 0.5", "--smooth-neighbors 20", "--smooth-graph spatial",
           "--spread-scale 1.5", "--depth-weight 0", "--gene-groups 10", "--no-spot-features", "--n-steps 5",
           "--panel-before-hold-out"]


def _section(n_spots=80, n_genes=30, seed=3, missing=True):
    adata = stmcdi.datasets.synthetic(n_spots=n_spots, n_genes=n_genes, seed=seed)
    if missing:
        dense = adata.X.toarray()
        dense[0, :5] = np.nan
        dense[7, 3:9] = np.nan
        adata.X = dense
    return adata


@pytest.fixture
def section(tmp_path) -> Path:
    """An 80-spot, 30-gene section with 11 missing entries, written to tmp_path/in.h5ad."""
    path = tmp_path / "in.h5ad"
    _section().write_h5ad(path)
    return path


def _error_line(err: str) -> str:
    """The error of a failed run: exactly one 'stmcdi: error:' line, no traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("stmcdi: error:")]
    assert len(lines) == 1, err
    assert lines[0] == err.strip().splitlines()[-1]
    return lines[0]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if _io.TMP_SUFFIX in p.name or "write-test" in p.name)


# ------------------------------------------------------------------------------------------------ parser
def test_parser_defaults():
    args = build_parser().parse_args(["benchmark", "--data", "x.h5ad"])
    assert args.protocol == ["entries"] and args.ratio == 0.1 and args.n_genes == 1000 and args.panel == "seurat_v3"
    assert args.compare_to == "stmcdi" and not args.no_extras and args.readout == "ensemble"
    args = build_parser().parse_args(["impute", "x.h5ad", "-o", "y.h5ad"])
    assert args.n_genes is None and not args.force and args.target == "missing" and args.verbose == 0
    assert build_parser().parse_args(["impute", "x.h5ad", "-o", "y.h5ad", "--n-genes", "all"]).n_genes == "all"
    # -q / -v / --debug are accepted before and after the command
    assert build_parser().parse_args(["-q", "impute", "x", "-o", "y"]).quiet
    args = build_parser().parse_args(["impute", "x", "-o", "y", "-v", "-v", "--debug"])
    assert args.verbose == 2 and args.debug
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ablation", "--data", "x.h5ad", "--study", "everything"])


def test_model_options_reach_the_model_and_impute():
    from stmcdi._cli import _model_kwargs
    from stmcdi._io import UsageError

    model, train, impute = _model_kwargs(build_parser().parse_args(["impute", "x.h5ad", "-o", "y.h5ad"]))
    assert model == {"encoder": "gcn"} and impute == {"sampler": "ddim", "readout": "ensemble"}
    assert train["max_epochs"] is None and train["enable_progress_bar"] is False
    args = build_parser().parse_args(["impute", "x.h5ad", "-o", "y.h5ad", "--mask-strategy", "nonzero", "--objective",
                                      "mae", "--expression-neighbors", "0", "--readout", "network", "--n-samples", "0",
                                      "--sampler", "ddpm", "--devices", "2", "--progress"])
    model, train, impute = _model_kwargs(args)
    assert model == {"encoder": "gcn", "mask_strategy": "nonzero", "objective": "mae", "n_expression_neighbors": 0}
    assert impute == {"sampler": "ddpm", "readout": "network", "n_samples": 0}
    assert train["devices"] == 2 and train["enable_progress_bar"] is True
    diffusion = ["impute", "x.h5ad", "-o", "y.h5ad", "--objective", "diffusion"]
    assert _model_kwargs(build_parser().parse_args(diffusion))[2]["n_samples"] == 5  # it estimates by sampling
    with pytest.raises(UsageError, match="--n-samples 1 or more"):
        _model_kwargs(build_parser().parse_args([*diffusion, "--n-samples", "0"]))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["impute", "x.h5ad", "-o", "y.h5ad", "--mask-strategy", "rows"])
    with pytest.raises(SystemExit):  # the benchmark tells every method about nonzero itself
        build_parser().parse_args(["benchmark", "--data", "x.h5ad", "--mask-strategy", "nonzero"])


@pytest.mark.parametrize("option", REMOVED)
def test_removed_options_are_refused(option, capsys):
    command = ["benchmark", "--data", "x.h5ad"] if option == "--panel-before-hold-out" else ["impute", "x", "-o", "y"]
    with pytest.raises(SystemExit) as exc:
        main([*command, *option.split()])
    assert exc.value.code == 2
    assert "unrecognized arguments" in _error_line(capsys.readouterr().err)


@pytest.mark.parametrize("bad", [["--epochs", "0"], ["--batch-size", "-1"], ["--n-samples", "x"], ["--devices", "0"]])
def test_bad_option_values_are_one_line_errors(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["impute", "x.h5ad", "-o", "y.h5ad", *bad])
    assert exc.value.code == 2
    assert bad[0] in _error_line(capsys.readouterr().err)


@pytest.mark.parametrize("command", ["demo", "impute", "benchmark", "ablation"])
def test_every_command_documents_its_output_and_examples(command):
    # the API reference shows these help texts: each says what it writes and gives runnable examples
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    text = sub.format_help()
    assert "output:" in text and "examples:" in text
    examples = [line.split()[1:] for line in text.split("examples:")[1].splitlines() if line.strip()]
    assert examples and all(args[0] == command for args in examples)
    parser = build_parser()
    for args in examples:  # every example parses
        parser.parse_args(args)
    undocumented = [a.dest for a in sub._actions if not a.help and a.dest != "help"]
    assert not undocumented, f"options without help: {undocumented}"


# ------------------------------------------------------------------------------------------------ impute: paths
@pytest.mark.parametrize("spelling", ["same", "relative", "symlink", "hardlink"])
def test_impute_refuses_to_write_over_its_input(spelling, section, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    before = section.read_bytes()
    src, out = str(section), str(section)
    if spelling == "relative":
        src, out = "in.h5ad", "sub/../in.h5ad"
    elif spelling == "symlink":
        (tmp_path / "link.h5ad").symlink_to(section)
        src, out = "link.h5ad", str(section)
    elif spelling == "hardlink":
        os.link(section, tmp_path / "hard.h5ad")
        out = "hard.h5ad"
    assert main(["impute", src, "-o", out, "--force", *TINY]) == 2
    err = capsys.readouterr().err
    assert "refusing to write over the input" in _error_line(err)
    assert "Read " not in err  # refused before reading
    assert section.read_bytes() == before


def test_impute_refuses_an_existing_output_without_force(section, tmp_path, capsys):
    dst = tmp_path / "out.h5ad"
    dst.write_bytes(b"precious")
    assert main(["impute", str(section), "-o", str(dst), *TINY]) == 2
    assert "already exists; pass --force" in _error_line(capsys.readouterr().err)
    assert dst.read_bytes() == b"precious"


@pytest.mark.parametrize("case", ["missing", "folder", "empty", "text", "broken-link", "out-folder-missing",
                                  "out-is-folder", "model-is-file", "model-exists", "model-folder-missing"])
def test_impute_checks_every_path_before_any_work(case, section, tmp_path, capsys):
    src, dst, extra = str(section), str(tmp_path / "out.h5ad"), []
    expected = {"missing": "does not exist", "folder": "is a folder", "empty": "is empty",
                "text": "is not an .h5ad file", "broken-link": "broken symbolic link",
                "out-folder-missing": "does not exist", "out-is-folder": "is a folder",
                "model-is-file": "is a file", "model-exists": "already holds a saved model",
                "model-folder-missing": "does not exist"}[case]
    if case == "missing":
        src = str(tmp_path / "nope.h5ad")
    elif case == "folder":
        src = str(tmp_path)
    elif case == "empty":
        (tmp_path / "empty.h5ad").touch()
        src = str(tmp_path / "empty.h5ad")
    elif case == "text":
        (tmp_path / "counts.h5ad").write_text("gene,spot,count\n")
        src = str(tmp_path / "counts.h5ad")
    elif case == "broken-link":
        (tmp_path / "dangling.h5ad").symlink_to(tmp_path / "gone.h5ad")
        src = str(tmp_path / "dangling.h5ad")
    elif case == "out-folder-missing":
        dst = str(tmp_path / "no" / "such" / "out.h5ad")
    elif case == "out-is-folder":
        dst = str(tmp_path)
    elif case == "model-is-file":
        (tmp_path / "notes.txt").write_text("")
        extra = ["--save-model", str(tmp_path / "notes.txt")]
    elif case == "model-exists":
        (tmp_path / "model").mkdir()
        (tmp_path / "model" / "model.pt").write_bytes(b"weights")
        extra = ["--save-model", str(tmp_path / "model")]
    else:
        extra = ["--save-model", str(tmp_path / "no" / "model")]
    t0 = time.perf_counter()
    assert main(["impute", src, "-o", dst, *extra, *TINY]) == 2
    err = capsys.readouterr().err
    assert expected in _error_line(err) and "Read " not in err
    assert time.perf_counter() - t0 < 5
    assert not (tmp_path / "out.h5ad").exists() and _leftovers(tmp_path) == []


def test_impute_unreadable_input_and_read_only_output_folder(section, tmp_path, monkeypatch, capsys):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    # as root, chmod does not stop reading or writing: simulate what the kernel answers other users
    with monkeypatch.context() as m:
        m.setattr(_io, "_read_head", denied)
        assert main(["impute", str(section), "-o", str(tmp_path / "out.h5ad")]) == 2
        assert "cannot be read (permission denied)" in _error_line(capsys.readouterr().err)
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    real = _io._probe_write
    with monkeypatch.context() as m:
        m.setattr(_io, "_probe_write", lambda folder: denied() if Path(folder) == read_only else real(folder))
        assert main(["impute", str(section), "-o", str(read_only / "out.h5ad")]) == 2
        assert "cannot write output" in _error_line(capsys.readouterr().err)
        assert main(["impute", str(section), "-o", str(tmp_path / "out.h5ad"), "--save-model",
                     str(read_only / "model")]) == 2
        assert "cannot write --save-model" in _error_line(capsys.readouterr().err)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads and writes regardless of mode")
def test_impute_permissions_for_real(section, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    section.chmod(0o000)
    try:
        assert main(["impute", str(section), "-o", str(tmp_path / "out.h5ad")]) == 2
        assert "permission denied" in _error_line(capsys.readouterr().err)
        section.chmod(0o644)
        assert main(["impute", str(section), "-o", str(locked / "out.h5ad")]) == 2
        assert "permission denied" in _error_line(capsys.readouterr().err)
    finally:
        section.chmod(0o644)
        locked.chmod(0o755)


# ------------------------------------------------------------------------------------------------ impute: data
def _bad_file(case: str, path: Path) -> list[str]:
    """Write the input of ``case`` to ``path``; return extra options."""
    if case == "not-anndata":
        with h5py.File(path, "w") as f:
            f["numbers"] = np.arange(3)
        return []
    adata = _section()
    dense = np.asarray(adata.X)
    extra = []
    if case == "no-coordinates":
        del adata.obsm["spatial"]
    elif case == "other-key":
        extra = ["--spatial-key", "xy"]
    elif case == "negative":
        dense[2, 2] = -1
    elif case == "non-integer":
        dense[2, 2] = 0.5
    elif case == "infinite":
        dense[2, 2] = np.inf
    elif case == "layer":
        extra = ["--layer", "counts"]
    elif case == "mask-layer":
        extra = ["--mask-layer", "holes"]
    elif case == "library-key":
        extra = ["--library-key", "sample"]
    adata.X = dense
    adata.write_h5ad(path)
    return extra


@pytest.mark.parametrize(("case", "expected"), [
    ("not-anndata", "cannot read"), ("no-coordinates", "obsm['spatial'] not found"), ("other-key", "obsm['xy']"),
    ("negative", "negative values"), ("non-integer", "non-integer values"), ("infinite", "infinite values"),
    ("layer", "layers['counts'] not found"), ("mask-layer", "layers['holes'] not found"),
    ("library-key", "obs['sample'] not found"),
])
def test_impute_bad_data_is_one_line_before_training(case, expected, tmp_path, capsys):
    src = tmp_path / "bad.h5ad"
    extra = _bad_file(case, src)
    assert main(["impute", str(src), "-o", str(tmp_path / "out.h5ad"), *extra, *TINY]) == 2
    err = capsys.readouterr().err
    assert expected in _error_line(err)
    assert "Training started" not in err and not (tmp_path / "out.h5ad").exists()


@pytest.mark.parametrize("flag", ["--debug", "-vv"])
def test_debug_shows_the_traceback(flag, tmp_path, capsys):
    src = tmp_path / "bad.h5ad"
    _bad_file("no-coordinates", src)
    assert main(["impute", str(src), "-o", str(tmp_path / "out.h5ad"), flag]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("stmcdi: error: adata.obsm['spatial']")


def test_nothing_to_fill_stops_before_training(tmp_path, capsys):
    src = tmp_path / "full.h5ad"
    _section(missing=False).write_h5ad(src)
    assert main(["impute", str(src), "-o", str(tmp_path / "out.h5ad"), "--n-genes", "12", "--panel", "cv",
                 *TINY]) == 2
    err = capsys.readouterr().err
    assert _error_line(err) == f"stmcdi: error: {nothing_to_fill_message(80, 12)}"
    assert "Gene panel: 12 of 30 genes (cv)" in err and "Training started" not in err


@pytest.mark.parametrize("case", ["zero", "negative", "no-genes", "no-spots"])
def test_empty_panels_and_inputs_are_clear_errors(case, section, tmp_path, capsys):
    src, extra = section, []
    if case in ("zero", "negative"):
        extra = ["--n-genes", "0" if case == "zero" else "-3"]
    else:
        adata = _section()
        adata = adata[:, :0].copy() if case == "no-genes" else adata[:0].copy()
        src = tmp_path / "empty.h5ad"
        adata.write_h5ad(src)
    assert main(["impute", str(src), "-o", str(tmp_path / "out.h5ad"), *extra]) == 2
    line = _error_line(capsys.readouterr().err)
    assert ("selects no genes" in line) if extra else ("nothing to impute" in line)


def test_many_genes_warn_about_the_cost_before_training(tmp_path, monkeypatch, capsys):
    import stmcdi._cli as cli

    monkeypatch.setattr(cli, "MANY_GENES", 20)  # a 30-gene file stands for a whole transcriptome
    src = tmp_path / "full.h5ad"
    _section(missing=False).write_h5ad(src)  # nothing to fill: stops right after the warning
    assert main(["impute", str(src), "-o", str(tmp_path / "out.h5ad")]) == 2
    err = capsys.readouterr().err
    warning = next(line for line in err.splitlines() if "WARNING" in line)
    assert "all 30 genes" in warning and "linearly" in warning and "--n-genes 1000" in warning
    assert main(["impute", str(src), "-o", str(tmp_path / "out.h5ad"), "--n-genes", "all"]) == 2
    assert "WARNING" not in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ impute: runs
def test_impute_writes_layers_logs_progress_and_saves_the_model(section, tmp_path, capsys):
    dst, model_dir = tmp_path / "out.h5ad", tmp_path / "model"
    before = section.read_bytes()
    assert main(["impute", str(section), "-o", str(dst), "--n-genes", "20", "--panel", "cv", "--save-model",
                 str(model_dir), *TINY]) == 0
    err = capsys.readouterr().err
    stages = ["Read ", "Gene panel: 20 of 30 genes (cv)", "nearest-neighbour graph", "Training started on ",
              "epoch 1/2, step", "train_loss", "Training finished: 2 epochs, ", "Imputation finished: ",
              f"Wrote {dst}", "Saved the model"]
    positions = [err.find(s) for s in stages]
    assert -1 not in positions and positions == sorted(positions), err
    assert all(re.match(r"\d\d:\d\d:\d\d ", line) for line in err.splitlines())  # timestamped lines
    out = ad.read_h5ad(dst)
    assert out.n_vars == 20 and {"imputed", "imputed_std"} <= set(out.layers)
    assert np.isfinite(out.layers["imputed"]).all()
    record = out.uns["stmcdi"]["impute"]
    assert record["readout"] == "ensemble" and record["n_samples"] == 2 and record["target"] == "missing"
    assert section.read_bytes() == before and _leftovers(tmp_path) == []
    assert (model_dir / "model.pt").exists()
    model = stmcdi.STMCDI.load(str(model_dir), adata=out)
    assert model.is_trained


def test_impute_force_quiet_network_readout_and_mask_layer(tmp_path, capsys):
    adata = _section(missing=False)
    adata.layers["holes"] = np.zeros(adata.shape, dtype=np.int8)
    adata.layers["holes"][:4, :3] = 1
    src, dst = tmp_path / "in.h5ad", tmp_path / "out.h5ad"
    adata.write_h5ad(src)
    dst.write_bytes(b"old")
    assert main(["-q", "impute", str(src), "-o", str(dst), "--force", "--mask-layer", "holes", "--readout", "network",
                 "--n-samples", "0", "--epochs", "1"]) == 0
    assert capsys.readouterr().err == ""  # --quiet: no progress lines
    out = ad.read_h5ad(dst)
    assert out.uns["stmcdi"]["impute"]["readout"] == "network" and out.uns["stmcdi"]["impute"]["n_filled"] == 12
    assert "imputed" in out.layers and "imputed_std" not in out.layers
    assert _leftovers(tmp_path) == []


def _write_then(action):
    """A stand-in for AnnData.write_h5ad that writes the file, then ``action(path)``."""
    real = ad.AnnData.write_h5ad
    seen = []

    def write(self, filename=None, **kwargs):
        real(self, filename, **kwargs)
        seen.append(Path(filename))
        action(Path(filename))

    return write, seen


def test_interrupt_while_writing_leaves_nothing(section, tmp_path, monkeypatch, capsys):
    def terminate(path):
        # the handler of main() turns the signal into an exception; never signal the test process without it
        assert signal.getsignal(signal.SIGTERM) is _io._raise_interrupted
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)

    write, seen = _write_then(terminate)
    monkeypatch.setattr(ad.AnnData, "write_h5ad", write)
    before = section.read_bytes()
    dst = tmp_path / "out.h5ad"
    assert main(["impute", str(section), "-o", str(dst), *TINY]) == 128 + signal.SIGTERM
    assert "interrupted by SIGTERM" in capsys.readouterr().err
    assert seen and seen[0].parent == tmp_path and seen[0] != dst  # it wrote a temporary file beside the output
    assert not dst.exists() and not seen[0].exists() and _leftovers(tmp_path) == []
    assert section.read_bytes() == before
    assert signal.getsignal(signal.SIGTERM) is not _io._raise_interrupted  # handlers restored


def test_failed_write_leaves_nothing(section, tmp_path, monkeypatch, capsys):
    def disk_full(path):
        raise OSError(28, "No space left on device")

    write, seen = _write_then(disk_full)
    monkeypatch.setattr(ad.AnnData, "write_h5ad", write)
    dst = tmp_path / "out.h5ad"
    assert main(["impute", str(section), "-o", str(dst), "--save-model", str(tmp_path / "model"), *TINY]) == 2
    assert "No space left on device" in _error_line(capsys.readouterr().err)
    assert not dst.exists() and not (tmp_path / "model").exists() and _leftovers(tmp_path) == []


def test_sigterm_during_training_leaves_input_untouched_and_no_output(tmp_path):
    adata = _section(n_spots=150, n_genes=40)
    src, dst = tmp_path / "in.h5ad", tmp_path / "out.h5ad"
    adata.write_h5ad(src)
    before = src.read_bytes()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "stmcdi._cli", "impute", str(src), "-o", str(dst), "--epochs",
                             "1000", "--batch-size", "16"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=tmp_path)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    err = []
    try:
        deadline = time.monotonic() + 180
        while not any("epoch 1/1000" in line for line in err):  # training is under way
            assert time.monotonic() < deadline and proc.poll() is None, "".join(err)
            try:
                err.append(lines.get(timeout=1))
            except queue.Empty:
                pass
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(0.2)
    while not lines.empty():
        err.append(lines.get())
    assert code == 128 + signal.SIGTERM, "".join(err)
    assert "interrupted by SIGTERM" in "".join(err) and "Traceback" not in "".join(err)
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5ad"]  # no output, no temporary file


def test_an_accelerator_that_is_not_there_is_one_line(section, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is there")
    assert main(["impute", str(section), "-o", str(tmp_path / "out.h5ad"), "--accelerator", "gpu", *TINY]) == 2
    assert "--accelerator" in _error_line(capsys.readouterr().err)
    assert not (tmp_path / "out.h5ad").exists() and _leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------------ demo, benchmark
def test_demo_prints_table_and_saves_figure(tmp_path, capsys):
    out_dir = tmp_path / "figs"
    assert main(["demo", "--n-spots", "90", "--n-genes", "16", "--out", str(out_dir), *TINY]) == 0
    out = capsys.readouterr().out
    for name in ("stmcdi (network alone)", *stmcdi.benchmark.BASELINES, "ceiling"):
        assert name in out
    assert re.search(r"^\s*stmcdi\s", out, re.M)
    assert (out_dir / "stmcdi_demo.png").stat().st_size > 10_000


def test_demo_refuses_a_file_as_its_folder(tmp_path, capsys):
    (tmp_path / "figs").write_text("")
    assert main(["demo", "--out", str(tmp_path / "figs")]) == 2
    assert "is a file" in _error_line(capsys.readouterr().err)


@pytest.mark.parametrize("protocol", ["everything", "entries:lots"])
def test_bad_protocol_is_a_clear_error(protocol, capsys):
    assert main(["benchmark", "--data", "x.h5ad", "--protocol", protocol]) == 2
    assert "protocol" in _error_line(capsys.readouterr().err).lower()


def test_benchmark_checks_paths_and_methods_before_any_work(section, tmp_path, capsys):
    cases = [(["--data", str(tmp_path / "nope.h5ad")], "does not exist"),
             (["--data", str(section), "--csv", str(tmp_path / "no" / "r.csv")], "does not exist"),
             (["--data", str(section), "--csv", str(section)], "refusing to write over the input"),
             (["--data", str(section), "--csv", str(tmp_path / "r.txt"), "--markdown", str(tmp_path / "r.txt")],
              "same file"),
             (["--data", str(section), "--n-genes", "0"], "selects no genes"),
             (["--data", str(section), "--no-stmcdi", "--methods", "low_rank"], "unknown methods")]
    for args, expected in cases:
        assert main(["benchmark", *args]) == 2
        assert expected in _error_line(capsys.readouterr().err)
    assert main(["ablation", "--study", "encoder", "--variants", "transformer", "--data", str(section)]) == 2
    assert "unknown variants" in _error_line(capsys.readouterr().err)


def test_benchmark_baselines_only_and_csv(tmp_path, capsys):
    src = tmp_path / "in.h5ad"
    _section(missing=False).write_h5ad(src)
    csv, md = tmp_path / "res.csv", tmp_path / "res.md"
    code = main(["benchmark", "--data", str(src), "--no-stmcdi", "--no-extras", "--n-genes", "all", "--protocol",
                 "entries", "entries:0.5", "thin:0.5", "--seeds", "0", "1", "--csv", str(csv), "--markdown", str(md),
                 "--compare-to", "soft_impute"])
    assert code == 0
    out = capsys.readouterr().out
    assert "Split-half ceiling" in out and "| thin" in out
    # the basis of the per-gene median is printed: at entries 50% each of the 30 genes has 40 held-out
    # entries; thinning these low counts leaves few genes with 10 held-out entries, which is flagged
    assert "Genes in the per-gene PCC median" in out
    assert int(re.search(r"entries 0\.5: (\d+)", out).group(1)) >= 25
    assert "Few genes under thin 0.5:" in out
    df = pd.read_csv(csv)
    n_methods = len(stmcdi.benchmark.BASELINES)
    assert len(df) == 3 * 2 * n_methods and set(df["protocol"]) == {"entries", "thin"}
    assert set(df["method"]) == set(stmcdi.benchmark.BASELINES) and sorted(set(df["ratio"])) == [0.1, 0.5]
    text = md.read_text()
    assert "Paired comparison across seeds: soft_impute minus each method" in text and "| spot_mean |" in text


def test_benchmark_scores_stmcdi_its_network_and_samples(tmp_path, capsys):
    src = tmp_path / "in.h5ad"
    _section(missing=False).write_h5ad(src)
    csv = tmp_path / "res.csv"
    assert main(["benchmark", "--data", str(src), "--n-genes", "all", "--methods", "stmcdi", "gene_mean",
                 "--protocol", "entries", "nonzero", "--seeds", "0", "1", "--csv", str(csv), *TINY]) == 0
    captured = capsys.readouterr()
    assert "coverage_90" in captured.out and "stmcdi minus each method" in captured.out
    assert "Training started on " in captured.err
    df = pd.read_csv(csv)
    assert set(df["method"]) == {"stmcdi", "stmcdi:network", "gene_mean"} and set(df["protocol"]) == {"entries",
                                                                                                     "nonzero"}
    df = df.set_index("method")
    assert np.isfinite(df.loc["stmcdi", "crps"]).all() and df.loc["gene_mean", "crps"].isna().all()


def test_ablation_runs_each_variant_on_the_same_splits(tmp_path, capsys):
    src = tmp_path / "in.h5ad"
    _section(missing=False).write_h5ad(src)
    csv = tmp_path / "abl.csv"
    assert main(["ablation", "--study", "objective", "--variants", "hybrid", "mae", "--data", str(src),
                 "--n-genes", "all", "--csv", str(csv), *TINY]) == 0
    out = capsys.readouterr().out
    assert "objective=hybrid minus each method" in out
    df = pd.read_csv(csv).set_index("method")
    assert list(df.index) == ["objective=hybrid", "objective=hybrid:network", "objective=mae",
                              "objective=mae:network"]
    assert df.loc["objective=hybrid", "n_scored"] == df.loc["objective=mae", "n_scored"]


def test_benchmark_chooses_the_panel_in_each_split(tmp_path, capsys):
    src = tmp_path / "in.h5ad"
    _section(missing=False).write_h5ad(src)
    csv = tmp_path / "res.csv"
    assert main(["benchmark", "--data", str(src), "--no-stmcdi", "--no-extras", "--methods", "gene_mean",
                 "--n-genes", "12", "--panel", "cv", "--csv", str(csv)]) == 0
    assert "12 genes (cv panel chosen in each split on its observed counts)" in capsys.readouterr().out
    assert pd.read_csv(csv)["n_scored"].iloc[0] > 0


def test_a_signal_that_library_code_turns_into_another_error_is_reported_as_the_interruption(
        section, tmp_path, monkeypatch, capsys):
    def terminate_inside_a_catch_all(path):
        # as pandas did once during training: the handler's exception is caught and replaced by a TypeError
        assert signal.getsignal(signal.SIGTERM) is _io._raise_interrupted
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
        except BaseException:  # noqa: BLE001 - a catch-all is what is simulated
            raise TypeError("Input must be a list / sequence of array-likes.") from None

    write, seen = _write_then(terminate_inside_a_catch_all)
    monkeypatch.setattr(ad.AnnData, "write_h5ad", write)
    dst = tmp_path / "out.h5ad"
    assert main(["impute", str(section), "-o", str(dst), *TINY]) == 128 + signal.SIGTERM
    assert "interrupted by SIGTERM" in capsys.readouterr().err
    assert not dst.exists() and _leftovers(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is not _io._raise_interrupted  # handlers restored
