"""The argument parser: every sub-command, its options and their help."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os

from ..config import AT_LEAST_1, FRACTION, PATH_OPTIONS
from ..errors import rank_voice
from .common import _train_option_names
from .tools import BENCHMARKS, cmd_benchmark, cmd_download, cmd_export, cmd_import, cmd_models, cmd_prepare, cmd_summary
from .training import cmd_train
from .use import cmd_evaluate, cmd_features, cmd_predict, cmd_retrieve, cmd_visualize


def _config_type(kind: type, check: tuple | None):
    """An argparse type: ``kind`` (int or float), finite, and passing ``check`` (see config.opt)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}") from None
        if not math.isfinite(value):  # NaN passes every range test
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if check is not None and not check[0](value):
            raise argparse.ArgumentTypeError(f"expected a number {check[1]}, got {value}")
        return value

    return parse


def _path(text: str) -> str:
    """An argparse type for a file or folder: a leading ``~`` is the home folder, as in a config file
    (the shell leaves it in ``--out=~/runs/x`` and in quotes, and train made a folder named ``~``); an
    empty one, what ``--data "$DATA"`` gives with DATA unset, is refused (``Path("")`` is the current
    folder: train read it as the data, ``--out ""`` trained into a new runs/DATE-MODEL)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path")
    return os.path.expanduser(text)


_positive_int = _config_type(int, AT_LEAST_1)
_fraction = _config_type(float, FRACTION)


def _add_config_options(parser: argparse.ArgumentParser, names: list[str] | None = None) -> None:
    """``alexnet train``'s options, generated from the TrainConfig fields (``names``: only these):
    each option's default, range, choices and help are declared once, in config.py."""
    import typing

    from ..config import _FIELDS, field_types, flag

    for name, kind in field_types().items():
        meta = _FIELDS[name].metadata
        if not meta.get("cli", True) or (names is not None and name not in names):
            continue
        base = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
        extra: dict = {"help": _with_default(name, meta.get("help")), "metavar": meta.get("metavar"), "default": None, "dest": name}
        if typing.get_origin(kind) in (list, dict):
            extra["action"] = "append"  # comma lists and KEY=VALUE tables are parsed by _config_overrides
        elif base is bool:
            extra["action"] = argparse.BooleanOptionalAction
            extra.pop("metavar")
        elif meta.get("choices"):
            extra["choices"] = meta["choices"]
        elif base in (int, float):
            extra["type"] = _config_type(base, meta.get("check"))
        elif name in PATH_OPTIONS:
            extra["type"] = _path
        if extra.get("metavar") is None and "action" not in extra and "choices" not in extra:
            extra["metavar"] = flag(name).lstrip("-").replace("-", "_").upper()
        parser.add_argument(flag(name), **extra)


def _with_default(name: str, help: str | None) -> str | None:
    """An option's help with its default: each preset's value where the presets differ."""
    from ..config import _FIELDS, PRESETS

    default = _FIELDS[name].default
    if help is None or "default" in help or default is dataclasses.MISSING or isinstance(default, (list, dict)):
        return help
    values = {p: recipe.get(name, default) for p, recipe in PRESETS.items()}
    said = f"the preset's: {', '.join(f'{p} {v}' for p, v in values.items())}" if len({repr(v) for v in values.values()}) > 1 else None
    if name == "workers":  # shared by every command, whose defaults differ
        return (f"{help} (train: {said or default}, at most one per core; prepare: one per core, at most 8; evaluate, "
                "features: 0; predict and retrieve decode in their own process)")
    if said:
        return f"{help} (default: {said})"
    return help if default is None or default is False else f"{help} (default: {default})"


def _add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=_positive_int, metavar="N",
        help="CPU threads for the computation (default: one per core); give each of two jobs on one machine half",
    )


def _add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", choices=("auto", "on", "off"), default="auto", help="progress bars (auto: on a terminal)")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no wrapped usage block) and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        if rank_voice(None) is None:  # a rank of a torchrun run: its local rank 0 says it (errors.rank_voice)
            self.exit(0)
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")

    def add_argument(self, *names, **kwargs):  # type: ignore[override]
        """A positional of choices is named as its usage line shows it, ``{filters,curves}``: argparse's
        'the following arguments are required: what' named its dest, which no usage or help shows."""
        if names and not names[0].startswith("-") and kwargs.get("choices") and "metavar" not in kwargs:
            kwargs["metavar"] = "{" + ",".join(map(str, kwargs["choices"])) + "}"
        return super().add_argument(*names, **kwargs)

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        """A command's positionals may follow its options ('import caffe --out c.pt FILE', 'visualize
        curves --out f.png RUN', 'predict a.jpg --checkpoint m.pt b.jpg'): argparse's default parse
        took them before the options only, and called the rest unrecognized."""
        optional = any(a.nargs in ("?", "*", "+") for a in self._get_positional_actions())
        if self._intermixing or self._subparsers is not None or not optional:
            return super().parse_known_args(args, namespace)
        self._intermixing = True  # parse_known_intermixed_args calls back here (Python 3.11, 3.12)
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        """An unknown option is the command's error: named by it, with the option it resembles."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            import difflib

            command = next((a._name_parser_map.get(parsed.command) for a in self._actions
                            if isinstance(a, argparse._SubParsersAction)), None) or self
            known = [o for a in command._actions for o in a.option_strings]
            close = [m for e in extra if e.startswith("--") for m in difflib.get_close_matches(e.split("=")[0], known, 1)]
            hint = f"; did you mean {' '.join(dict.fromkeys(close))}?" if close else ""
            command.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
        if hasattr(parsed, "checkpoint_file"):
            _one_checkpoint(parsed, next((a._name_parser_map[parsed.command] for a in self._actions
                                          if isinstance(a, argparse._SubParsersAction)), self))
        return parsed


def _add_checkpoint(parser: argparse.ArgumentParser, help: str) -> None:
    """A checkpoint read by the command, as ``--checkpoint FILE`` or as its positional CHECKPOINT (import
    takes its FILE, visualize curves its RUN_DIR, predict its images so): 'alexnet evaluate run/best.pt'
    was refused. :func:`_one_checkpoint` makes them one ``checkpoint``, required."""
    parser.add_argument("checkpoint_file", type=_path, nargs="?", metavar="CHECKPOINT", help="the checkpoint, as --checkpoint gives it")
    parser.add_argument("--checkpoint", type=_path, help=help)


def _one_checkpoint(parsed: argparse.Namespace, command: argparse.ArgumentParser) -> None:
    """``parsed.checkpoint`` from CHECKPOINT or ``--checkpoint``: one of them, once."""
    typed, parsed.checkpoint = parsed.checkpoint, parsed.checkpoint or parsed.checkpoint_file
    if typed and parsed.checkpoint_file and parsed.checkpoint_file != typed:
        command.error(f"CHECKPOINT {parsed.checkpoint_file} and --checkpoint {typed}: give one checkpoint")
    del parsed.checkpoint_file
    if not parsed.checkpoint:
        after = " (files after --ensemble are the ensemble's)" if getattr(parsed, "ensemble", None) else ""
        command.error(f"the following arguments are required: CHECKPOINT or --checkpoint{after}")


class _Version(argparse.Action):
    """``--version``: alexnet's and what it runs on, the lines a bug report asks for, read without importing
    torch (its import would cost the answer seconds)."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        import platform
        import sys

        from ..installed import versions

        found = {name: "not installed" if said == "none" else said for name, said in versions().items()}
        line = (f"alexnet {found['alexnet']} (torch {found['torch']}, torchvision {found['torchvision']}, "
                f"Python {found['python']}, {platform.system()} {platform.machine()})\n")
        parser._print_message(line, sys.stdout)  # as argparse's own version action: stdout, a closed pipe ignored
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The ``alexnet`` parser: one sub-command per job, each with ``func`` set to the ``cmd_*`` that runs it."""
    p = _Parser(
        prog="alexnet",
        description="AlexNet (Krizhevsky, Sutskever & Hinton 2012): train, evaluate and inspect it.",
    )
    p.add_argument("--version", action=_Version, help="show the versions of alexnet, torch, torchvision and Python, and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    common = _Parser(add_help=False)
    _add_config_options(common, ["device", "workers", "amp"])
    _add_progress(common)
    _add_threads(common)

    _add_train(sub, common)
    _add_use_commands(sub, common)
    _add_tool_commands(sub, common)
    _add_info_commands(sub, common)
    return p


def _add_train(sub, common: argparse.ArgumentParser) -> None:
    """``alexnet train``: its options are generated from TrainConfig (config.py)."""
    t = sub.add_parser(
        "train",
        parents=[common],
        help="train a model (default: AlexNet on Fashion-MNIST)",
        description="Train a model. With no arguments: alexnet_small on Debian's Fashion-MNIST (5 epochs, about 4-13 minutes "
        "on 2 CPU cores: 4 in bf16, 12 in float32). Options override the preset, which --config FILE (TOML/YAML) may also override.",
    )
    t.add_argument("--config", type=_path, help="TOML or YAML file of training options (command-line options win; relative paths in it are "
                   "taken from the current folder, as typed ones are), or a run's "
                   "config.json: that run again (its thread count too, unless --threads)")
    t.add_argument("--force", action="store_true",
                   help="replace the run that --out holds (its own files only, once this run has its first checkpoint)")
    t.add_argument("--dropout", type=_fraction, help="dropout probability of fc6/fc7 (paper: 0.5); a model option")
    _add_config_options(t, [name for name in _train_option_names() if name not in ("device", "workers", "amp")])
    t.add_argument(
        "--nproc", type=_positive_int, metavar="N",
        help="data-parallel over N processes on this machine (runs torchrun; one per GPU, or CPU processes with gloo); "
        "--batch-size stays the global batch and must divide by N. Many machines: see docs/distributed.md",
    )
    t.set_defaults(func=cmd_train)


def _add_use_commands(sub, common: argparse.ArgumentParser) -> None:
    """The commands that use a trained model: evaluate, predict, features, retrieve, visualize."""
    _add_evaluate(sub, common)
    _add_predict(sub, common)
    _add_features_and_retrieve(sub, common)
    _add_visualize(sub)


def _add_evaluate(sub, common: argparse.ArgumentParser) -> None:
    """evaluate: top-1/top-5 of a checkpoint or an ensemble."""
    e = sub.add_parser("evaluate", parents=[common], help="top-1/top-5 accuracy and error of a checkpoint")
    _add_checkpoint(e, "a .pt or .safetensors file from 'alexnet train', 'import' or 'export'")
    e.add_argument("--data", type=_path,
                   help="data to evaluate on (default: the data set the checkpoint was trained on; needed for imports, "
                   "exports): its val split; a folder without one, the images training held out if the checkpoint "
                   "trained on it (an ensemble: the first checkpoint's; a warning names a member that trained on "
                   "some of them), else every image")
    e.add_argument("--num-classes", type=_positive_int, help="check that the checkpoint has this many classes")
    e.add_argument("--batch-size", type=_positive_int, default=256, help="images per batch (default: 256)")
    _add_config_options(e, ["decode", "channels_last"])
    e.add_argument("--ten-crop", action="store_true", help="average the softmax of the 4 corner + centre crops and their mirrors")
    e.add_argument("--ensemble", type=_path, nargs="+", metavar="FILE", help="more checkpoints: average the softmax of all models")
    e.add_argument("--out", type=_path, help="folder for per_class.csv, confusion.png, confusion.csv and evaluate.json")
    e.add_argument("--json", action="store_true", help="print one JSON object: top1, top5, top1_error, top5_error, loss (mean "
                   "negative log-likelihood), images (the number scored), ten_crop, precision, models (the checkpoints), "
                   "data (what was scored)")
    e.set_defaults(func=cmd_evaluate)


def _add_predict(sub, common: argparse.ArgumentParser) -> None:
    """predict: the top classes of the user's own images."""
    pr = sub.add_parser("predict", parents=[common], help="top-K classes of your own images")
    pr.add_argument("images", type=_path, nargs="+", metavar="IMAGE_OR_FOLDER",
                    help="image files, or folders of them (searched recursively)")
    pr.add_argument("--checkpoint", type=_path, required=True, help="a checkpoint (.pt) or an exported .safetensors")
    pr.add_argument("--top", "--top-k", "--k", dest="top", type=_positive_int, default=5,
                    help="classes per image (default: 5); --top-k or --k, as retrieve takes, is the same")
    pr.add_argument("--batch-size", type=_positive_int, default=32, help="images per batch (default: 32)")
    pr.add_argument("--json", action="store_true", help="print a JSON list, an object per image: path, top (a list of class, "
                    "index, probability), label (the true class its folder names, or null)")
    pr.add_argument("--figure", type=_path, help="figure file (.png, .pdf, .svg, .jpg): each image with bars for its --top classes, "
                    "at most 5 (the paper's figure 4, left)")
    pr.set_defaults(func=cmd_predict)


def _add_features_and_retrieve(sub, common: argparse.ArgumentParser) -> None:
    """features (an fc7 index of a folder) and retrieve (a query's nearest indexed images)."""
    fe = sub.add_parser("features", parents=[common], help="fc7 features of every image of a folder (an index for 'retrieve')")
    _add_checkpoint(fe, "a checkpoint (.pt) or an exported .safetensors")
    fe.add_argument("--data", type=_path, required=True, help="a folder of CLASS/IMAGE files")
    fe.add_argument("--out", type=_path, required=True, help="index file, NAME.safetensors")
    fe.add_argument("--batch-size", type=_positive_int, default=64, help="images per batch (default: 64)")
    fe.set_defaults(func=cmd_features)

    rt = sub.add_parser("retrieve", parents=[common], help="the indexed images nearest to a query in fc7 space")
    rt.add_argument("image", type=_path, metavar="QUERY_IMAGE", help="the image whose neighbours to list")
    rt.add_argument("--index", type=_path, required=True, help="a file written by 'alexnet features'")
    rt.add_argument("--checkpoint", type=_path, help="default: the checkpoint the index was built with")
    rt.add_argument("--k", "--top-k", "--top", dest="k", type=_positive_int, default=6,
                    help="neighbours to list (default: 6); --top-k or --top, as predict takes, is the same")
    rt.add_argument("--json", action="store_true", help="print a JSON list, nearest first: path, distance (Euclidean, in fc7 "
                    "space), label (its class, or null)")
    rt.add_argument("--figure", type=_path,
                    help="figure file (.png, .pdf, .svg, .jpg): the query and its neighbours (the paper's figure 4, right)")
    rt.set_defaults(func=cmd_retrieve)


def _add_visualize(sub) -> None:
    """visualize: conv1 filters or training curves."""
    v = sub.add_parser("visualize", help="figures: conv1 filters (paper fig. 3) or training curves")
    v.add_argument("what", choices=("filters", "curves"),
                   help="filters: a checkpoint's conv1 kernels; curves: runs' loss, error and learning rate per epoch")
    v.add_argument("run_dir", type=_path, nargs="*", default=[], metavar="PATH",  # a default: argparse requires a "*" without
                   help="curves: run folder(s), several share one figure, a colour each; "
                   "filters: the checkpoint, as --checkpoint gives it")
    v.add_argument("--checkpoint", type=_path, help="checkpoint (for filters)")
    v.add_argument("--learnt", action="store_true", help="filters: draw what training changed in conv1 (the weights minus those "
                   "the run's --seed drew at the start), where a short run leaves them mostly their random start")
    v.add_argument("--out", type=_path, help="figure file, .png, .pdf, .svg or .jpg (filters: .png or .jpg) (default: filters.png; "
                   "RUN_DIR/curves.png for one run, curves.png for several)")
    v.set_defaults(func=cmd_visualize)


def _add_tool_commands(sub, common: argparse.ArgumentParser) -> None:
    """Weights in and out, data preparation."""
    im = sub.add_parser("import", help="convert torchvision or Caffe (bvlc_alexnet) weights into a checkpoint")
    im.add_argument("source", choices=("torchvision", "caffe"), help="whose weights: torchvision's alexnet or BVLC's bvlc_alexnet")
    im.add_argument("file", type=_path, nargs="?", help="torchvision: a saved state dict; caffe: a .caffemodel or a bvlc_alexnet.npy "
                    "(default: the published ImageNet weights, downloaded once into torch.hub's cache)")
    im.add_argument("--out", type=_path, required=True, help="checkpoint to write (.pt)")
    im.add_argument("--mean-file", type=_path, help="caffe: a mean .binaryproto (default: the ILSVRC-2012 mean)")
    im.add_argument("--allow-pickle", action="store_true", help="caffe .npy: unpickle anything (only for files you trust)")
    _add_progress(im)
    im.set_defaults(func=cmd_import)

    ex = sub.add_parser("export", help="write a checkpoint as safetensors (+ JSON), ONNX, torch.export (.pt2), TorchScript "
                        "or torchvision's state dict")
    _add_checkpoint(ex, "the checkpoint to write out (.pt or .safetensors)")
    ex.add_argument(
        "--format",
        choices=("safetensors", "onnx", "pt2", "torchscript", "torchvision"),  # export.FORMATS (a test checks), without importing torch
        help="default: the one --out's name says (.safetensors, .onnx, .pt2, .ts or .torchscript, .pth: torchvision's "
             "alexnet state dict, for alexnet_owt networks), else safetensors",
    )
    ex.add_argument("--out", type=_path, required=True, help="the file to write (safetensors: its JSON config goes beside it)")
    _add_threads(ex)
    ex.set_defaults(func=cmd_export)

    pp = sub.add_parser("prepare", help="decode an image folder once into the packed 256x256 format (with mean image and PCA)")
    _add_config_options(pp, ["workers"])  # no --device or --amp: it decodes on the CPU and computes in float64
    _add_progress(pp)
    _add_threads(pp)
    pp.add_argument("--data", type=_path, required=True, help="image folder (CLASS/IMAGE, or train/ and val/; ILSVRC-2012 layout)")
    pp.add_argument("--out", type=_path, required=True, help="folder for the packed shards and index.json")
    pp.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of skipping it")
    pp.add_argument("--size", type=_positive_int, default=256, help="side of the stored square images (paper: 256)")
    pp.add_argument("--shard-size", type=_positive_int, default=1024, help="images per shard file")
    pp.add_argument("--force", action="store_true", help="replace the packed data set --out holds")
    pp.set_defaults(func=cmd_prepare)


def _add_info_commands(sub, common: argparse.ArgumentParser) -> None:
    """Summaries, the model list, data download, benchmarks."""
    s = sub.add_parser("summary", help="per-layer shapes, neurons, parameters and multiply-accumulates")
    s.add_argument("--model", help="a registered model (default: alexnet_paper)")
    s.add_argument("--model-option", action="append", metavar="KEY=VALUE",
                   help="model config override, as for train: e.g. towers=1, lrn=false, input_size=227")
    s.add_argument("--checkpoint", type=_path, help="describe the network of this checkpoint (.pt or .safetensors)")
    s.add_argument("--num-classes", type=_positive_int, help="outputs of fc8 (default: 1000)")
    s.add_argument("--input-size", type=_positive_int, help="input side in pixels (default: the model's): --model's network built "
                   "for it, as --model-option input_size=N; a checkpoint's network must fit it")
    s.add_argument("--json", action="store_true", help="print one JSON object: model, input (channels, height, width), "
                   "num_classes, layers (a list of name, type, output (its shape), neurons, params, macs), and the totals "
                   "params, macs (multiply-accumulates per image), neurons")
    s.set_defaults(func=cmd_summary)

    m = sub.add_parser("models", help="list the registered models")
    m.add_argument("--json", action="store_true", help="print a JSON list, an object per model: name, description, weights "
                   "(its published ImageNet weights: publisher, top1, top5; or null)")
    m.set_defaults(func=cmd_models)

    d = sub.add_parser("download", help="download a data set (needs the internet): Fashion-MNIST, Imagenette, Imagewoof")
    d.add_argument("dataset", choices=("fashion-mnist", "imagenette", "imagenette-320", "imagenette-160", "imagewoof"),
                   help="imagenette: fast.ai's imagenette2 (full-size photos; -320/-160: shorter side 320/160 px)")
    d.add_argument("--out", type=_path, required=True, help="folder to download and unpack into")
    _add_progress(d)
    d.set_defaults(func=cmd_download)

    b = sub.add_parser("benchmark", help="speed against torchvision/torch: LRN, training step, inference")
    b.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    b.add_argument("--quick", action="store_true", help="tiny settings: checks they run, figures mean nothing")
    b.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    b.add_argument("--repeats", type=_positive_int, help="timed rounds per benchmark (default: each one's own)")
    b.add_argument("--threads", type=_positive_int, metavar="N", help="CPU threads for both sides (default: one per core)")
    b.add_argument("--dir", type=_path, help="the benchmarks/ folder (default: the one beside src/ in this checkout)")
    b.add_argument("--data", type=_path, help="photos for inference's agreement and accuracy, CLASS/IMAGE (default: "
                   "../shared/data/imagewoof-mini/val beside the checkout if there; else timings on synthetic images)")
    b.set_defaults(func=cmd_benchmark)
