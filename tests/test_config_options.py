"""Training options are declared once (config.TrainConfig) and reach a run the same way from the
command line, a config file or a preset: generated flags, one range check."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from alexnet.cli import build_parser, main
from alexnet.cli.common import _config_overrides
from alexnet.config import TrainConfig, flag, resolve_config
from alexnet.errors import ConfigError, DataError


def _train_parser():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices["train"]


def test_every_training_option_has_one_flag():
    strings = {s for a in _train_parser()._actions for s in a.option_strings}
    for f in dataclasses.fields(TrainConfig):
        assert flag(f.name) in strings, f"TrainConfig.{f.name} has no command-line flag"


def test_command_line_values_reach_the_config(tmp_path):
    argv = ["train", "--data", str(tmp_path), "--gamma", "0.5", "--step-size", "7", "--max-reductions", "1",
            "--eval-batch-size", "32", "--nesterov", "--no-channels-last", "--towers", "cpu,cpu", "--freeze",
            "conv1,conv2", "--lr-mult", "fc8=10", "--model-option", "lrn=false", "--dropout", "0.25",
            "--patience", "2", "--schedule", "step", "--health", "warn", "--seed", "-3", "--workers", "0"]
    overrides = _config_overrides(build_parser().parse_args(argv))
    cfg = resolve_config(overrides.pop("preset"), overrides)
    expected = {"data": str(tmp_path), "gamma": 0.5, "step_size": 7, "plateau_max_reductions": 1, "eval_batch_size": 32,
                "nesterov": True, "channels_last": False, "tower_devices": ["cpu", "cpu"], "freeze": ["conv1", "conv2"],
                "lr_mult": {"fc8": 10.0}, "plateau_patience": 2, "schedule": "step", "health": "warn", "seed": -3,
                "workers": 0, "preset": "photos"}
    assert {k: getattr(cfg, k) for k in expected} == expected
    assert cfg.model_options["lrn"] is False and cfg.model_options["dropout"] == 0.25


# A seed past 64 bits (or one whose data-order seed, seed * 100003, is) was an internal error in the first epoch.
@pytest.mark.parametrize("name, bad", [("gamma", "-1"), ("step_size", "0"), ("lr", "nan"), ("momentum", "1"),
                                       ("seed", str(2**63)), ("seed", str(-2**62))])
def test_the_same_range_check_on_the_command_line_and_in_a_file(name, bad, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["train", flag(name), bad])
    assert e.value.code == 2 and f"argument {flag(name)}" in capsys.readouterr().err
    config = tmp_path / "c.toml"
    config.write_text(f"{name} = {bad}\n")
    # The file's error names the file and the key written there, not a flag the user never typed.
    with pytest.raises(ConfigError, match=f"^--config {re.escape(str(config))}: {name} must be"):
        resolve_config(None, {}, config)
    # A good value on the command line wins over the file's bad one; a bad one typed is the flag's.
    assert resolve_config(None, {name: 1 if name in ("step_size", "seed") else 0.5}, config) is not None
    config.write_text(f"{name} = 1\n" if name in ("step_size", "seed") else f"{name} = 0.5\n")
    with pytest.raises(ConfigError, match=f"^{flag(name)} must be"):
        resolve_config(None, {name: float(bad) if name in ("lr", "momentum", "gamma") else int(bad)}, config)


def test_a_bad_model_or_model_option_names_the_file_or_the_flag_that_gave_it(tmp_path):
    """An unknown model or a bad model option from a config file said only "unknown model 'x'" or
    "model option dropout must be ...", naming neither the file nor a flag."""
    config = tmp_path / "c.toml"
    config.write_text('model = "alexnet_nope"\n[model_options]\ndropout = 1.5\nfoo = 1\n')
    said = {}
    for name, typed in [("file model", {}), ("typed model", {"model": "alexnet_nope2"}),
                        ("file options", {"model": "alexnet_paper"}),
                        ("typed option", {"model": "alexnet_paper", "model_options": {"dropout": 0.5, "lrn": "maybe"}})]:
        with pytest.raises(ConfigError) as e:
            resolve_config(None, typed, config)
        said[name] = str(e.value)
    assert said["file model"].startswith(f"--config {config}: model: unknown model 'alexnet_nope'")
    assert said["typed model"].startswith("--model: unknown model 'alexnet_nope2'")
    assert said["file options"].startswith(f"--config {config}: model_options: ") and "foo" in said["file options"]
    # the typed option is at fault even though the file's foo is bad as well: the flag is named, with its error
    assert said["typed option"].startswith("--model-option: model option lrn must be true or false")
    config.write_text("[model_options]\ndropout = 0.25\n")  # good options from a file still build
    assert resolve_config(None, {"model": "alexnet_paper"}, config).model_options["dropout"] == 0.25


@pytest.mark.parametrize("text, said", [("data = 5", "data must be a string, got 5"),
                                        ('data = ["a"]', "data must be a string, got ['a']"),
                                        ("init_from = 5", "init_from must be a string, got 5"),
                                        ('freeze = "features"', "freeze must be a list of strings, got 'features'"),
                                        ("warmup_epochs = 3\nepochs = 3",
                                         "warmup_epochs 3 is not shorter than --epochs 3: the rate would still be rising")])
def test_a_path_of_another_type_in_a_file_is_one_line(text, said, tmp_path, capsys):
    """A path option that is no string in a config file was used as a path before the options were
    checked: "internal error: TypeError: expected str, bytes or os.PathLike object", exit 1."""
    from alexnet.cli import main

    (tmp_path / "c.toml").write_text(text + "\n")
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip().startswith(f"alexnet: error: --config {tmp_path / 'c.toml'}: {said}")
    assert not (tmp_path / "run").exists()


def test_the_default_preset_follows_the_data(tmp_path, tiny_fmnist):
    from test_hostile_input import _cifar_folder

    _cifar_folder(tmp_path / "cifar")
    assert resolve_config(None, {"data": str(tiny_fmnist)}).preset == "fashion_mnist"
    assert resolve_config(None, {"data": str(tmp_path / "cifar")}).preset == "cifar"
    assert resolve_config(None, {"data": str(tmp_path)}).preset == "photos"
    with pytest.raises(DataError, match="path not found"):
        resolve_config(None, {"data": str(tmp_path / "missing")})


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_a_config_files_leading_tilde_is_the_home_folder(tmp_path, tiny_fmnist, monkeypatch, suffix):
    """data = "~/photos" in a config file was a folder named '~' in the current one: not found for
    data and init_from, and for out a run written to ./~/...; the shell expands a typed ~, so a file's
    now means the home folder too (only at the start: 'runs/~x' stays as written)."""
    home = tmp_path / "home"
    (home / "weights").mkdir(parents=True)
    (home / "weights" / "w.pt").write_bytes(b"")
    tiny_fmnist.rename(home / "fmnist")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    values = {"data": "~/fmnist", "out": "~/runs/a", "init_from": "~/weights/w.pt", "epochs": 1}
    config = tmp_path / f"c{suffix}"
    config.write_text("".join(f'{k} = {v!r}\n'.replace("'", '"') for k, v in values.items()) if suffix == ".toml"
                      else json.dumps(values))
    cfg = resolve_config(None, {}, config)
    assert (cfg.data, cfg.out, cfg.init_from) == (str(home / "fmnist"), str(home / "runs" / "a"), str(home / "weights" / "w.pt"))
    config.write_text(json.dumps({**values, "out": "runs/~a"}) if suffix == ".json" else f'out = "runs/~a"\ndata = "{home / "fmnist"}"\n')
    assert resolve_config(None, {}, config).out == "runs/~a"


def test_an_init_bias_that_would_do_nothing_is_refused(tmp_path):
    """init_bias sets biases under the paper's init only: typed for the photos preset's He init (which
    zeroes them), another model's init or a run from --init-from's weights, it was taken without a
    word, and config.json recorded it; the preset's own init_bias (paper: 0.1) is not 'typed'."""
    import alexnet

    folder = tmp_path / "photos"
    (folder / "a").mkdir(parents=True)
    base = {"data": str(folder)}
    assert resolve_config("paper", {**base, "model_options": {"init_bias": 0.5}}).model_options["init_bias"] == 0.5
    assert resolve_config(None, {**base, "model_options": {"init_bias": 0.5, "init": "paper"}}).model_options["init"] == "paper"
    assert resolve_config("paper", {**base, "model_options": {"init": "kaiming"}}).model_options["init_bias"] == 0.1
    # What the refusal says, checked on the network: under He init the biases are 0 whatever init_bias is.
    assert alexnet.create_model("alexnet_small", init="kaiming", init_bias=0.5).conv2.bias.abs().max() == 0
    for preset, more, said in [
        (None, {}, "only init=paper sets biases from it, and this run's init is kaiming (--model-option init=paper takes it)"),
        ("owt", {}, "only init=paper sets biases from it, and this run's init is torch (--model-option init=paper takes it)"),
        ("paper", {"init_from": str(tmp_path / "w.pt")}, f"the weights come from --init-from {tmp_path / 'w.pt'}"),
    ]:
        values = {"model_options": {"init_bias": 0.5}, **base, **more}
        with pytest.raises(ConfigError, match=r"^model option init_bias=0.5 would do nothing: " + re.escape(said)):
            resolve_config(preset, values)


def test_a_short_run_keeps_the_recipes_warm_up_fraction_and_reaches_its_decay(tmp_path):
    """The photos recipe warms up for 2 of its 30 epochs; a 2-epoch run warmed up for its whole
    length and ended at the peak rate. Now the recipe's warm-up takes at most half the run, and the
    learning rate of any run of it reaches the peak and decays to near 0 (the schedule computed
    step by step); a warm-up given explicitly is kept, and one as long as the run is refused."""
    from alexnet.optim import step_lr_factor

    folder = tmp_path / "photos"
    (folder / "a").mkdir(parents=True)
    for epochs, warm in [(1, 0.5), (2, 1.0), (3, 1.5), (4, 2.0), (30, 2.0), (60, 2.0)]:
        cfg = resolve_config(None, {"data": str(folder), "epochs": epochs})
        assert cfg.preset == "photos" and cfg.warmup_epochs == pytest.approx(warm), epochs
        steps = 100
        lr = [step_lr_factor(cfg.schedule, s, steps, cfg.epochs, cfg.warmup_epochs, cfg.step_size, cfg.gamma)
              for s in range(steps * cfg.epochs)]
        assert max(lr) == pytest.approx(1.0, abs=0.02) and lr[-1] < 0.05, epochs
    assert resolve_config(None, {"data": str(folder), "epochs": 2, "warmup_epochs": 1.5}).warmup_epochs == 1.5
    with pytest.raises(ConfigError, match=r"--warmup-epochs 2 is not shorter than --epochs 2"):
        resolve_config(None, {"data": str(folder), "epochs": 2, "warmup_epochs": 2.0})


def test_config_file_mistakes_are_one_line_naming_the_fix(tmp_path, capsys):
    """A key spelled as its command-line option names the key to write; 'resume' in a file is refused
    (it was taken silently and left a broken run folder); a folder or a file that is not UTF-8 is one
    line, exit 2 (the latter was an internal error)."""
    from alexnet.cli import main

    cases = {
        "keys.toml": (b"patience = 3\ndropout = 0.1\n",
                      "unknown training option(s): dropout (write it under [model_options]), patience (write plateau_patience)"),
        "resume.toml": (b'resume = "runs/x"\n', "'resume' cannot be set in a file; continue a run with --resume DIR"),
        "latin.toml": (b"\xff\xfe epochs = 1\n", "cannot parse: 'utf-8' codec can't decode byte 0xff"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        capsys.readouterr()
        assert main(["train", "--config", str(tmp_path / name), "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"alexnet: error: --config {tmp_path / name}: {message}"), err
    (tmp_path / "folder.toml").mkdir()
    assert main(["train", "--config", str(tmp_path / "folder.toml")]) == 2
    assert capsys.readouterr().err.strip() == f"alexnet: error: --config: a folder, not a file: {tmp_path / 'folder.toml'}"
    assert not (tmp_path / "run").exists()


def test_a_run_starts_again_from_its_config_json(tiny_fmnist, tmp_path):
    """config.json is a run's resolved configuration, yet `train --config RUN/config.json` refused it
    ("unknown training option(s): distributed, environment, preprocess, train"): a run could be
    repeated only by typing its options again. It now trains that run again into its own --out: the
    same options, weights and metrics, on the thread count the run recorded. The paper preset's own
    init_bias, which config.json repeats, is not refused as a typed one for a net of He init."""
    import json

    import torch
    from conftest import run_cli

    first, again = tmp_path / "run", tmp_path / "again"
    tiny = ["--model-option", "widths=[8,16,16,16,16]", "--model-option", "fc_width=32"]
    r = run_cli("train", "--data", str(tiny_fmnist), "--preset", "paper", "--model", "alexnet_small", "--epochs", "1",
                "--batch-size", "16", "--seed", "5", *tiny, "--out", str(first), "--threads", "1")
    assert r.returncode == 0, r.stderr
    r = run_cli("train", "--config", str(first / "config.json"), "--out", str(again))
    assert r.returncode == 0, r.stderr
    records = [json.loads((run / "config.json").read_text()) for run in (first, again)]
    assert records[1]["environment"]["threads"] == 1
    assert {**records[0]["train"], "out": None} == {**records[1]["train"], "out": None}
    a, b = (torch.load(run / "last.pt", weights_only=True)["model"] for run in (first, again))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics = [[{k: v for k, v in json.loads(line).items() if "second" not in k and "time" not in k}
                for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (first, again)]
    assert metrics[0] == metrics[1] and len(metrics[0]) == 1


def test_a_typed_num_classes_other_than_the_datas_is_refused(tiny_fmnist, tmp_path):
    """fc8 gets one output per class of the data: --model-option num_classes=5 on the 10 classes of
    Fashion-MNIST trained 10 outputs without a word, while config.json recorded num_classes=5."""
    from conftest import run_cli

    tiny = ["--model-option", "widths=[8,16,16,16,16]", "--model-option", "fc_width=32"]
    common = ["train", "--data", str(tiny_fmnist), "--epochs", "1", "--batch-size", "16", "--threads", "1", *tiny]
    r = run_cli(*common, "--model-option", "num_classes=5", "--out", str(tmp_path / "five"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    said = f"alexnet: error: --model-option num_classes=5 does not match the 10 classes of Fashion-MNIST ({tiny_fmnist})"
    assert r.stderr.strip() == said
    assert not (tmp_path / "five").exists()
    r = run_cli(*common, "--model-option", "num_classes=10", "--out", str(tmp_path / "ten"))
    assert r.returncode == 0, r.stderr


def test_momentum_0_under_a_nesterov_preset_is_one_line(tiny_fmnist, tmp_path):
    """torch.optim.SGD raises ValueError for Nesterov without momentum: 'train --momentum 0' under the
    default presets (Nesterov on) stopped with 'internal error: ValueError' once the data was loaded.
    Now exit 2 with the fix; with --no-nesterov, or the paper's optimizer, momentum 0 trains."""
    from conftest import run_cli

    tiny = ["--model-option", "widths=[8,16,16,16,16]", "--model-option", "fc_width=32"]
    common = ["train", "--data", str(tiny_fmnist), "--epochs", "1", "--batch-size", "16", "--threads", "1", *tiny,
              "--momentum", "0"]
    r = run_cli(*common, "--out", str(tmp_path / "nesterov"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("alexnet: error: --momentum 0: Nesterov") and "--no-nesterov" in r.stderr
    assert not (tmp_path / "nesterov").exists()
    with pytest.raises(ConfigError, match="--no-nesterov"):
        resolve_config("photos", dict(data="x", momentum=0.0))
    assert resolve_config("photos", dict(data="x", momentum=0.0, nesterov=False)).momentum == 0.0
    assert resolve_config("paper", dict(data="x", momentum=0.0)).momentum == 0.0


def test_model_options_from_python_in_the_command_line_form_are_named(tmp_path):
    """resolve_config's model_options (README: "train's options by field name") given as --model-option
    writes them, a "KEY=VALUE" string or a list of them, raised "TypeError: 'str' object is not a
    mapping" from a dict merge, naming no option; a config file's was named already. A dict works."""
    for given in ("input_size=64", ["input_size=64"], 64):
        with pytest.raises(ConfigError) as refused:
            resolve_config(None, {"model_options": given})
        assert str(refused.value) == f"--model-option must be a table of model options (a dict: {{'input_size': 112}}), got {given!r}"
    assert resolve_config(None, {"model_options": {"input_size": 32}}).model_options["input_size"] == 32


def test_resolve_config_without_overrides(tmp_path):
    """resolve_config() or resolve_config(None, None) (no options but the defaults: the Fashion-MNIST
    recipe) raised "AttributeError: 'NoneType' object has no attribute 'items'"; overrides that are
    not a dict (a list of "--epochs 5" words) said nothing clearer. The defaults are the preset's."""
    for cfg in (resolve_config(), resolve_config(None, None)):
        assert (cfg.preset, cfg.model, cfg.data, cfg.epochs) == ("fashion_mnist", "alexnet_small", None, 5)  # README's default run
    with pytest.raises(ConfigError) as refused:
        resolve_config(None, ["--epochs", "5"])
    assert str(refused.value) == "overrides must be a dict of options by field name ({'epochs': 5}), got ['--epochs', '5']"


def test_a_distributed_runs_config_json_says_when_replayed_in_another_process_count(tiny_fmnist, tmp_path):
    """`train --config RUN/config.json` repeats a run bitwise, but a run of `--nproc 2` replayed without
    --nproc trained in one process, without a word (measured: a 2-process imagewoof run's weights came
    back 2e-4 away; with --nproc 2, bitwise). config.json records the process count under
    distributed.world_size: the replay now names it and the --nproc that repeats it."""
    import json

    from conftest import run_cli

    first = tmp_path / "run"
    tiny = ["--model-option", "widths=[8,16,16,16,16]", "--model-option", "fc_width=32"]
    r = run_cli("train", "--data", str(tiny_fmnist), "--model", "alexnet_small", "--epochs", "1",
                "--batch-size", "16", *tiny, "--out", str(first), "--threads", "1")
    assert r.returncode == 0, r.stderr
    record = json.loads((first / "config.json").read_text())
    assert record["distributed"]["world_size"] == 1
    r = run_cli("train", "--config", str(first / "config.json"), "--out", str(tmp_path / "same"))
    assert r.returncode == 0 and "note: --config" not in r.stderr, r.stderr  # one process, as recorded: nothing to say
    assert record["environment"]["world_size"] == 1  # the count it started in
    record["distributed"]["world_size"] = record["environment"]["world_size"] = 2  # a `--nproc 2` run's record
    (tmp_path / "ddp.json").write_text(json.dumps(record))
    r = run_cli("train", "--config", str(tmp_path / "ddp.json"), "--out", str(tmp_path / "again"))
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if line.startswith("note: --config")]
    assert notes == [f"note: --config {tmp_path / 'ddp.json'}: that run trained in 2 processes and this one in "
                     "1 process, so it is not bitwise the same run (--nproc 2 repeats it)"], r.stderr
    # A run of --nproc 2 resumed in one process: config.json's distributed said 1 (the count it went on in),
    # and the replay in one process said nothing, while its first epochs had trained in 2.
    record["distributed"]["world_size"] = 1
    (tmp_path / "resumed.json").write_text(json.dumps(record))
    r = run_cli("train", "--config", str(tmp_path / "resumed.json"), "--out", str(tmp_path / "third"))
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if line.startswith("note: --config")]
    assert notes == [f"note: --config {tmp_path / 'resumed.json'}: that run started in 2 processes and was resumed in 1, "
                     "so no process count repeats it bitwise (this one trains in 1)"], r.stderr


def test_nesterov_is_never_recorded_for_the_papers_update_rule(tmp_path, capsys):
    """PaperSGD (--optimizer paper) has no Nesterov momentum, yet 'train --optimizer paper --nesterov'
    trained without it and config.json said nesterov: true, as did --optimizer paper under the photos
    and fashion_mnist presets (their Nesterov is torch SGD's). Typed or written in a file: refused in
    one line; the preset's: recorded false; an older run's config.json that recorded it: replayed."""
    import json

    from alexnet.cli import main

    assert resolve_config("photos", {"data": "x", "optimizer": "paper"}).nesterov is False
    assert resolve_config("fashion_mnist", {"optimizer": "paper"}).nesterov is False
    assert resolve_config("photos", {"data": "x"}).nesterov is True  # torch's SGD keeps the preset's
    with pytest.raises(ConfigError, match=r"^--nesterov: the paper's update rule"):
        resolve_config("photos", {"data": "x", "optimizer": "paper", "nesterov": True})
    (tmp_path / "c.toml").write_text('optimizer = "paper"\nnesterov = true\n')
    with pytest.raises(ConfigError, match=re.escape(f"--config {tmp_path / 'c.toml'}: nesterov = true")):
        resolve_config("paper", {"data": "x"}, tmp_path / "c.toml")
    record = {"train": TrainConfig(optimizer="paper", nesterov=True).to_dict(), "environment": {}}
    (tmp_path / "config.json").write_text(json.dumps(record))
    assert resolve_config(None, {}, tmp_path / "config.json").nesterov is False
    capsys.readouterr()
    assert main(["train", "--optimizer", "paper", "--nesterov", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("alexnet: error: --nesterov: the paper's"), err
    assert not (tmp_path / "run").exists()


def test_an_older_runs_config_json_replays_its_bias_decay(tmp_path):
    """A run's config.json from before --bias-decay (3f28a16) has no bias_decay: that release decayed
    the biases under every preset, the paper's too. Replaying a paper-preset run filled in the preset's
    false without a word (its biases then trained without weight decay); it now replays true. A
    config file of one's own still takes the preset's."""
    import json

    train = TrainConfig(preset="paper", optimizer="paper", bias_decay=True).to_dict()
    del train["bias_decay"]  # what 647e223 (2026-12-02) wrote
    (tmp_path / "config.json").write_text(json.dumps({"train": train, "environment": {}}))
    assert resolve_config(None, {}, tmp_path / "config.json").bias_decay is True
    assert resolve_config(None, {"bias_decay": False}, tmp_path / "config.json").bias_decay is False  # typed wins
    (tmp_path / "mine.toml").write_text('preset = "paper"\n')
    assert resolve_config(None, {}, tmp_path / "mine.toml").bias_decay is False


def test_a_run_resumed_in_another_precision_says_so_when_replayed(tiny_fmnist, tmp_path):
    """--resume may change --amp (the non-finite-loss error suggests --amp none): config.json then gives
    the resumed run's --amp among its options while environment.amp keeps the one its first epochs ran
    in. `train --config RUN/config.json` (README: "trains that run again, bitwise") replayed the whole
    run in the last precision without a word; it now says which precision the run started in."""
    import json

    from conftest import run_cli

    run = tmp_path / "run"
    tiny = ["--model-option", "widths=[8,16,16,16,16]", "--model-option", "fc_width=32"]
    r = run_cli("train", "--data", str(tiny_fmnist), "--model", "alexnet_small", "--epochs", "1", "--batch-size", "16",
                *tiny, "--amp", "bf16", "--out", str(run), "--threads", "1")
    assert r.returncode == 0, r.stderr
    r = run_cli("train", "--resume", str(run), "--epochs", "2", "--amp", "none", "--threads", "1")
    assert r.returncode == 0, r.stderr
    record = json.loads((run / "config.json").read_text())
    assert (record["train"]["amp"], record["environment"]["amp"]) == ("none", "bfloat16")
    r = run_cli("train", "--config", str(run / "config.json"), "--epochs", "1", "--out", str(tmp_path / "again"))
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if line.startswith("note: --config")]
    assert notes == [f"note: --config {run / 'config.json'}: that run started in bf16 (its environment.amp) and this "
                     "one trains in float32 (--amp none), so it is not bitwise the same run"], r.stderr


def test_a_run_resumed_with_more_epochs_says_so_when_replayed(tiny_fmnist, tmp_path):
    """A run resumed with more --epochs under a length-shaped schedule (onecycle here, the presets'
    default) trained its first epochs on the shorter schedule. config.json recorded only the final
    --epochs, and `train --config RUN/config.json` trained that schedule from the start: another run,
    without a word (a 6-epoch photo run resumed to 7 gave 0.2420 at epoch 7, its replay 0.2280).
    config.json now records each resume's changes under "resumes"; the replay names them and the
    commands that repeat the run, and those commands give the run's weights bitwise."""
    import json

    import torch
    from conftest import run_cli

    run = tmp_path / "run"
    tiny = ["--model-option", "widths=[8,16,16,16,16]", "--model-option", "fc_width=32"]
    r = run_cli("train", "--data", str(tiny_fmnist), "--model", "alexnet_small", "--epochs", "1", "--batch-size", "16",
                *tiny, "--out", str(run), "--threads", "1")
    assert r.returncode == 0, r.stderr
    r = run_cli("train", "--resume", str(run), "--epochs", "2", "--threads", "1")
    assert r.returncode == 0, r.stderr
    record = json.loads((run / "config.json").read_text())
    assert record["train"]["epochs"] == 2 and record["train"]["schedule"] == "onecycle"
    assert record["resumes"] == [{"at": {"epoch": 1, "batch": 0, "step": 4}, "changed": {"epochs": [1, 2]}}]

    def weights(folder):
        return torch.load(folder / "last.pt", map_location="cpu", weights_only=True)["model"]

    replay = tmp_path / "replay"
    r = run_cli("train", "--config", str(run / "config.json"), "--out", str(replay))
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if line.startswith("note: --config")]
    assert notes == [f"note: --config {run / 'config.json'}: that run began with --epochs 1 and was resumed after epoch 1 "
                     "with --epochs 2; this one trains with --epochs 2 from the start, so it is not the same run: its "
                     f"onecycle learning rate follows the run's length; --epochs 1, then --resume {replay} --epochs 2 "
                     "repeats it"], r.stderr
    assert not all(torch.equal(weights(run)[k], v) for k, v in weights(replay).items())  # another run indeed
    # What the note says repeats it: the first part (no note: it is that part), then the resume.
    again = tmp_path / "again"
    r = run_cli("train", "--config", str(run / "config.json"), "--epochs", "1", "--out", str(again))
    assert r.returncode == 0 and "note: --config" not in r.stderr, r.stderr
    assert run_cli("train", "--resume", str(again), "--epochs", "2").returncode == 0
    assert all(torch.equal(weights(run)[k], v) for k, v in weights(again).items())
    assert json.loads((again / "config.json").read_text())["resumes"] == record["resumes"]


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "plateau", "step"])
def test_a_replay_names_what_each_resume_changed(schedule, capsys):
    """The plateau and step schedules never read --epochs (optim.step_lr_factor): more epochs alone
    leave a replay of the final --epochs the resumed run, so only the layout's change is said there. A
    resume killed mid-epoch has no options that stop a run there: no command to repeat it."""
    from alexnet.cli.training import _note_replayed_resumes

    cfg = resolve_config(None, {"schedule": schedule, "epochs": 9, "channels_last": False, "out": "new"})
    resumes = [{"at": {"epoch": 3, "batch": 5, "step": 17}, "changed": {"epochs": [4, 6]}},
               {"at": {"epoch": 6, "batch": 0, "step": 30}, "changed": {"epochs": [6, 9], "workers": [0, 2],
                                                                      "channels_last": [True, False]}}]
    _note_replayed_resumes("c.json", resumes, cfg)
    if schedule in ("onecycle", "cosine"):
        expected = ("that run began with --epochs 4 --channels-last and was resumed in epoch 4 with --epochs 6 and after "
                    "epoch 6 with --epochs 9 --no-channels-last; this one trains with --epochs 9 --no-channels-last from "
                    f"the start, so it is not the same run: its {schedule} learning rate follows the run's length")
    else:  # the second resume extended the run after its 6 epochs: --epochs 6 stops a run there
        expected = ("that run began with --channels-last and was resumed after epoch 6 with --no-channels-last; this one "
                    "trains with --no-channels-last from the start, so it is not the same run; --epochs 6 "
                    "--channels-last, then --resume new --epochs 9 --no-channels-last repeats it")
    assert capsys.readouterr().err == f"note: --config c.json: {expected}\n"
    _note_replayed_resumes("c.json", resumes[:1], cfg)  # more epochs alone
    assert capsys.readouterr().err == ("" if schedule in ("plateau", "step") else
                                       "note: --config c.json: that run began with --epochs 4 and was resumed in epoch 4 "
                                       "with --epochs 6; this one trains with --epochs 9 from the start, so it is not the "
                                       f"same run: its {schedule} learning rate follows the run's length\n")
    _note_replayed_resumes("c.json", [{"at": "damaged", "changed": {"epochs": [4, 6]}}, 7, {"at": {}, "changed": {}}], cfg)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_a_replay_names_its_precision_as_the_run_recorded_it(amp):
    """--config's note compares the replay's precision (cli.training._amp_name) with environment.amp,
    which fit writes (train._environment): each spelt it out itself, and a spelling that drifted would
    tell every replay in the same precision that it is not bitwise the run."""
    import torch

    from alexnet.cli.training import _amp_name
    from alexnet.runtime import resolve_amp
    from alexnet.train import _environment

    cfg = resolve_config(None, {"amp": amp, "device": "cpu"})
    recorded = _environment(torch.device("cpu"), resolve_amp(amp, torch.device("cpu")))["amp"]
    assert _amp_name(cfg) == recorded == {"none": "none", "bf16": "bfloat16"}[amp]


def test_a_number_option_is_recorded_as_a_float_wherever_it_came_from(tiny_fmnist, tmp_path):
    """config.json's train.lr was 1 for 'lr = 1' in a TOML file (or fit's {"lr": 1}) and 1.0 for --lr 1;
    so were --warmup-epochs, --label-smoothing and --lr-mult's values: one field, two JSON types."""
    import json

    from alexnet.cli.common import _config_overrides
    from alexnet.cli.options import build_parser

    (tmp_path / "c.toml").write_text('lr = 1\nwarmup_epochs = 0\nlabel_smoothing = 0\n[lr_mult]\nfc8 = 10\n')
    from_file = resolve_config(None, {"data": str(tiny_fmnist)}, tmp_path / "c.toml")
    typed = resolve_config(None, _config_overrides(build_parser().parse_args(
        ["train", "--data", str(tiny_fmnist), "--lr", "1", "--warmup-epochs", "0", "--label-smoothing", "0", "--lr-mult", "fc8=10"])))
    in_python = resolve_config(None, {"data": str(tiny_fmnist), "lr": 1, "warmup_epochs": 0, "label_smoothing": 0,
                                      "lr_mult": {"fc8": 10}})
    assert json.dumps(from_file.to_dict()) == json.dumps(typed.to_dict()) == json.dumps(in_python.to_dict())
    assert (typed.lr, typed.warmup_epochs, typed.lr_mult) == (1.0, 0.0, {"fc8": 10.0}) and type(in_python.lr) is float


def test_a_path_a_config_file_gives_that_is_not_there_names_the_file(tiny_fmnist, tmp_path, monkeypatch, capsys):
    """A config file's relative data or init_from path is taken from the current folder, as a typed one
    (a checked-in configs/x.toml saying data = "data/woof" is run from the project's root). One that
    is not there said '--data: path not found: ../fmnist', a flag never typed, and not from where the
    path was taken: now the file, the key and the folder, in one line (exit 2)."""
    from alexnet.cli import main

    (tmp_path / "configs").mkdir()
    config = tmp_path / "configs" / "c.toml"
    config.write_text(f'data = "{tiny_fmnist.name}"\nepochs = 1\n')  # beside configs/, not in it
    monkeypatch.chdir(tmp_path / "configs")
    said = (f"--config {config}: data = '{tiny_fmnist.name}': not found (a relative path is taken from the current "
            f"folder, {tmp_path / 'configs'}, not the file's); --data PATH gives its place")
    with pytest.raises(ConfigError) as caught:
        resolve_config(None, {}, config)
    assert str(caught.value) == said
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == f"alexnet: error: {said}"
    assert not (tmp_path / "run").exists()
    config.write_text(f'init_from = "{tmp_path / "gone.pt"}"\n')
    with pytest.raises(ConfigError, match=re.escape(f"init_from = '{tmp_path / 'gone.pt'}': not found; --init-from PATH")):
        resolve_config(None, {"data": str(tiny_fmnist)}, config)
    monkeypatch.chdir(tmp_path)  # from the folder the path is relative to, it is the data
    config.write_text(f'data = "{tiny_fmnist.name}"\n')
    assert resolve_config(None, {}, config).data == str(tiny_fmnist)


@pytest.mark.parametrize("typed, unused", [
    (["--schedule", "plateau", "--gamma", "0.5"], ["--gamma 0.5"]),  # the paper's plateau divides by 10 whatever --gamma
    (["--schedule", "cosine", "--step-size", "2"], ["--step-size 2"]),
    (["--schedule", "step", "--patience", "2", "--max-reductions", "1"], ["--patience 2", "--max-reductions 1"]),
    (["--gamma", "0.5"], ["--gamma 0.5"]),  # the fashion_mnist preset's onecycle
])
def test_a_typed_schedule_option_the_schedule_never_reads_is_refused(typed, unused, tiny_fmnist, tmp_path, capsys, monkeypatch):
    """'--schedule plateau --gamma 0.5' trained with lr / 10 at each plateau (0.1 of the rate in
    metrics.jsonl, not 0.5) without a word; --step-size with cosine, --patience with step: the same."""
    import alexnet.train

    monkeypatch.setattr(alexnet.train, "fit", lambda *a, **k: pytest.fail("trained with an option that does nothing"))
    assert main(["train", "--data", str(tiny_fmnist), "--out", str(tmp_path / "run"), "--workers", "0", *typed]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(u in err for u in unused) and "would do nothing" in err, err
    assert not (tmp_path / "run").exists()


def test_schedule_options_of_a_config_file_or_with_their_schedule_are_taken(tiny_fmnist, tmp_path, monkeypatch):
    """A config file (a run's config.json) carries every schedule's options: only typed ones are refused."""
    import alexnet.train

    ran = []
    monkeypatch.setattr(alexnet.train, "fit", lambda cfg, **k: ran.append(cfg) or {})
    config = tmp_path / "c.toml"
    config.write_text(f'data = "{tiny_fmnist}"\nschedule = "cosine"\ngamma = 0.5\nstep_size = 3\nplateau_patience = 2\n')
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "a"), "--workers", "0"]) == 0
    assert main(["train", "--data", str(tiny_fmnist), "--out", str(tmp_path / "b"), "--workers", "0", "--schedule", "step",
                 "--gamma", "0.5", "--step-size", "1"]) == 0
    assert main(["train", "--data", str(tiny_fmnist), "--out", str(tmp_path / "c"), "--workers", "0", "--schedule", "plateau",
                 "--patience", "1", "--max-reductions", "2"]) == 0
    assert [(c.schedule, c.gamma, c.step_size, c.plateau_patience) for c in ran] == [
        ("cosine", 0.5, 3, 2), ("step", 0.5, 1, 4), ("plateau", 0.1, 30, 1)]


def test_a_run_started_on_another_device_says_so_when_replayed(tiny_fmnist, tmp_path, capsys, monkeypatch):
    """A GPU run (environment.device cuda) resumed on a laptop with --device cpu records device cpu among
    its options: `train --config RUN/config.json` replayed all of it on the CPU, on the GPU machine too,
    without a word. No GPU here: the record is the one such a run leaves (its options, device cpu,
    and the environment it started in)."""
    import json

    import alexnet.train

    monkeypatch.setattr(alexnet.train, "fit", lambda cfg, **k: {})  # the note comes before any training
    record = {"train": {**resolve_config(None, {"data": str(tiny_fmnist), "device": "cpu", "amp": "none"}).to_dict()},
              "environment": {"device": "cuda", "amp": "none", "threads": 1}, "distributed": {"world_size": 1}}
    for started, noted in [("cuda", True), ("cuda:1", True), ("cpu", False)]:
        record["environment"]["device"] = started
        config = tmp_path / f"{started.replace(':', '')}.json"
        config.write_text(json.dumps(record))
        capsys.readouterr()
        assert main(["train", "--config", str(config), "--out", str(tmp_path / f"again-{started}")]) == 0
        notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: --config")]
        assert notes == ([f"note: --config {config}: that run started on {started} (its environment.device) and this "
                          "one trains on cpu (--device cpu), so it is not bitwise the same run"] if noted else []), notes
    # Towers train on their own devices, whatever --device says: a run of --towers cpu,cpu on a GPU machine
    # (one here: --device cuda resolves as it would there).
    import torch

    import alexnet.runtime

    resolve = alexnet.runtime.resolve_device
    monkeypatch.setattr(alexnet.runtime, "resolve_device", lambda name="auto": torch.device(name) if name == "cuda" else resolve(name))
    record["train"].update(device="cuda", tower_devices=["cpu", "cpu"])
    record["environment"]["device"] = "cpu"
    config = tmp_path / "towers.json"
    config.write_text(json.dumps(record))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "again-towers")]) == 0
    assert "note: --config" not in capsys.readouterr().err


def test_a_replays_precision_is_resolved_on_the_towers_device(monkeypatch):
    """Under --towers, fit trains on the first tower's device and resolves --amp for it; the replay's
    precision note read --device (here a CUDA device that --towers cpu,cpu never uses: fp16 there)."""
    import torch

    import alexnet.runtime
    from alexnet.cli.training import _amp_name

    monkeypatch.setattr(alexnet.runtime, "resolve_device", lambda name: torch.device("cuda"))
    cfg = resolve_config(None, {"amp": "fp16", "device": "cuda"})
    assert _amp_name(cfg) == "float16"  # one device: --device's
    towers = resolve_config(None, {"amp": "fp16", "device": "cuda", "tower_devices": ["cpu", "cpu"]})
    assert _amp_name(towers) is None  # fp16 on the CPU towers: fit refuses it in one line, no note here


def test_an_unknown_data_preset_names_its_option_or_key(tmp_path, capsys):
    """'--data-preset foo' said 'data preset: unknown preset ...', naming neither the flag nor the
    config file's key. Its choices are declared with the option; they are the recipes data.presets has."""
    from alexnet.data.presets import PRESETS

    declared = {f.name: f for f in dataclasses.fields(TrainConfig)}["data_preset"].metadata["choices"]
    assert set(declared) == set(PRESETS)
    with pytest.raises(SystemExit):
        main(["train", "--data-preset", "foo", "--out", str(tmp_path / "run")])
    assert "argument --data-preset: invalid choice: 'foo'" in capsys.readouterr().err
    (tmp_path / "c.toml").write_text('data_preset = "foo"\n')
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == (f"alexnet: error: --config {tmp_path / 'c.toml'}: data_preset must be one of "
                                               "photos, paper, torchvision, fashion_mnist, cifar, got 'foo'")
    assert not (tmp_path / "run").exists()
