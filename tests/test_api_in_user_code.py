"""The models and recipes in a user's own code, as a torchvision or timm user would take them."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from test_evaluate import PRE  # 67 px inputs cut from 76 px stored images

import alexnet
from alexnet import create_model
from alexnet.checkpoint import save_atomic
from alexnet.cli import main


def tiny_checkpoint(path: Path) -> Path:
    """A small paper-layout net (LRN, two towers) with its recipe, saved as 'alexnet train' would."""
    torch.manual_seed(0)
    m = create_model("alexnet_paper", num_classes=3, widths=(8, 8, 8, 8, 8), fc_width=16, input_size=67, init="kaiming")
    with torch.no_grad():  # spread the scores, so that a pixel's difference shows in the probabilities
        m.fc8.weight.mul_(30)
    mean_image = torch.linspace(40, 200, 3 * 76 * 76).reshape(3, 76, 76)
    recipe = dict(PRE, mean_image=mean_image)  # the paper's recipe: a mean image
    save_atomic({"model": m.state_dict(), "model_config": m.config.to_dict(), "classes": ["a", "b", "c"], "preprocess": recipe}, path)
    return path


def some_images(folder: Path) -> list[Path]:
    """A JPEG (RGB, under twice the recipe's resize: decoded in full by predict too), an RGBA PNG, a
    grey PNG and a JPEG stored sideways with an EXIF orientation tag."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, size=(120, 140, 3), dtype=np.uint8))
    photo.save(folder / "photo.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, size=(90, 100, 4), dtype=np.uint8), "RGBA").save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 256, size=(100, 80), dtype=np.uint8), "L").save(folder / "grey.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    photo.save(folder / "sideways.jpg", quality=90, exif=exif)
    return sorted(folder.iterdir())


def test_the_recipe_as_a_transform_gives_what_predict_gives(tmp_path, capsys):
    """model.preprocess.transforms() on a path, a PIL image and a read_image tensor feeds the model
    what 'alexnet predict' feeds it: the probabilities of predict --json (--amp none) to float32's
    rounding; a tensor is taken as it is (no EXIF turn), so the sideways JPEG's is not predict's."""
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    paths = some_images(tmp_path / "images")
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(ckpt), *map(str, paths), "--json", "--amp", "none", "--top", "3"]) == 0
    cli = {r["path"]: [t["probability"] for t in sorted(r["top"], key=lambda t: t["index"])] for r in json.loads(capsys.readouterr().out)}
    model = alexnet.load(ckpt)
    transform = pickle.loads(pickle.dumps(model.preprocess.transforms()))  # as DataLoader workers get it
    assert "resize=76" in repr(transform)
    for path in paths:
        want = torch.tensor(cli[str(path)])
        with Image.open(path) as image:
            inputs = {"path": transform(path), "pil": transform(image), "tensor": transform(torchvision.io.read_image(str(path)))}
        for kind, x in inputs.items():
            assert x.shape == (3, 67, 67) and x.dtype == torch.float32
            with torch.no_grad():
                got = torch.softmax(model(x.unsqueeze(0)), dim=1)[0]
            if kind == "tensor" and path.name == "sideways.jpg":
                assert not torch.allclose(got, want, atol=1e-3), "read_image does not turn it: neither does the transform"
            else:
                torch.testing.assert_close(got, want, rtol=0, atol=1e-5, msg=f"{path.name} as a {kind}")


def test_the_transform_refuses_what_it_cannot_take(tmp_path):
    transform = alexnet.load(tiny_checkpoint(tmp_path / "m.pt")).preprocess.transforms()
    with pytest.raises(ValueError, match="uint8 .* not torch.float32"):
        transform(torch.rand(3, 80, 80))
    with pytest.raises(ValueError, match=r"shape \(1, 3, 80, 80\)"):
        transform(torch.zeros(1, 3, 80, 80, dtype=torch.uint8))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        transform(np.zeros((80, 80, 3), dtype=np.uint8))
    with pytest.raises(alexnet.DataError, match="nothing.jpg"):
        transform(tmp_path / "nothing.jpg")


def test_an_index_given_by_its_path_is_a_type_error_naming_load_index(tmp_path):
    """retrieve(model, "index.safetensors", query), as the command line takes --index, said
    'string indices must be integers, not 'str'' from inside query_amp."""
    from alexnet.retrieval import check_index_model, retrieve

    model = alexnet.load(tiny_checkpoint(tmp_path / "m.pt"))
    query = some_images(tmp_path / "images")[0]
    for call in (lambda: retrieve(model, "index.safetensors", query), lambda: check_index_model(model, Path("i.safetensors"))):
        with pytest.raises(TypeError, match=r"index is the dict build_index or load_index returns, not a .*: alexnet.retrieval.load_index"):
            call()
    with pytest.raises(TypeError, match="retrieve: index .* not a torch.Tensor$"):
        retrieve(model, torch.zeros(3, 16), query)


def test_a_list_of_paths_where_one_path_is_taken_is_named_as_such(tmp_path):
    """retrieve(model, index, ["q.jpg"]) said the query was 'not a list holding a builtins.NoneType'
    (kind_of named the first item that is not a path, and there was none)."""
    from alexnet.retrieval import retrieve

    model = alexnet.load(tiny_checkpoint(tmp_path / "m.pt"))
    index = {"features": torch.zeros(1, 16)}
    for query, said in ((["q.jpg"], "a list of 1 path"), ((), "a tuple of 0 paths"), ([Path("a"), 3], "a list holding a builtins.int")):
        with pytest.raises(TypeError, match=rf"the query is the path of one image file, not {said}$"):
            retrieve(model, index, query)


def test_forward_hooks_see_the_papers_layers():
    """README: a hook on norm1 gets LRN(ReLU(conv1)) with conv1's output as its input (the ReLU runs
    inside it), pool1's the overlapping max-pool of that; the formula per tower in float64 here."""
    torch.manual_seed(0)
    model = create_model("alexnet_paper", num_classes=3, widths=(8, 8, 8, 8, 8), fc_width=16, input_size=67).eval()
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name in ("conv1", "norm1", "pool1"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, (i[0].clone(), o.clone())))
    x = torch.randn(2, 3, 67, 67) * 500  # conv1 maps of ~100: the window sum moves the denominator from k=2 to ~6
    model(x)
    conv = torch.nn.functional.conv2d(x.double(), model.conv1.weight.double(), model.conv1.bias.double(), 4, 2)
    r = conv.clamp(min=0)
    lrn = torch.empty_like(r)
    for tower in (0, 4):  # 8 maps in two towers of 4, each normalised alone (k=2, n=5, alpha=1e-4, beta=0.75)
        for i in range(4):
            lo, hi = tower + max(0, i - 2), tower + min(3, i + 2)
            lrn[:, tower + i] = r[:, tower + i] / (2 + 1e-4 * (r[:, lo : hi + 1] ** 2).sum(1)) ** 0.75
    torch.testing.assert_close(seen["conv1"][1].double(), conv, rtol=1e-5, atol=1e-2)
    torch.testing.assert_close(seen["norm1"][0], seen["conv1"][1])
    torch.testing.assert_close(seen["norm1"][1].double(), lrn, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(seen["pool1"][1].double(), torch.nn.functional.max_pool2d(lrn, 3, 2), rtol=1e-5, atol=1e-4)


def test_a_model_name_or_filter_that_is_no_string_is_a_type_error_naming_it():
    """list_models(1) said "object of type 'int' has no len()" (from fnmatch), create_model(["alexnet_small"])
    "unhashable type: 'list'": neither named the argument."""
    with pytest.raises(TypeError, match="list_models: filter is a shell pattern .* not int"):
        alexnet.list_models(1)
    for call in (lambda: create_model(["alexnet_small"]), lambda: alexnet.model_config(b"alexnet_small")):
        with pytest.raises(TypeError, match="a model is named by a str from alexnet.list_models"):
            call()
    assert alexnet.list_models("alexnet_p*") == ["alexnet_paper", "alexnet_paper_1gpu"]


def test_build_index_names_a_batch_size_or_workers_it_cannot_take(tmp_path):
    """build_index(workers=1.5) said "'float' object cannot be interpreted as an integer",
    workers="0" "'<' not supported between instances of 'str' and 'int'" (both from the DataLoader),
    batch_size="8" 'batch_size should be a positive integer value, but got batch_size=8'."""
    from alexnet.retrieval import build_index

    model = alexnet.load(tiny_checkpoint(tmp_path / "m.pt"))
    folder = tmp_path / "images"
    some_images(folder)
    for kwargs, said in (({"workers": 1.5}, "workers must be a whole number >= 0, got 1.5"),
                         ({"workers": "0"}, "workers must be a whole number >= 0, got '0'"),
                         ({"batch_size": "8"}, "batch_size must be a whole number >= 1, got '8'"),
                         ({"batch_size": True}, "batch_size must be a whole number >= 1, got True")):
        with pytest.raises(alexnet.ConfigError, match=f"^build_index: {said}$"):
            build_index(model, folder, **kwargs)
    with pytest.raises(TypeError, match="build_index: data is an image folder's path, not a builtins.NoneType"):
        build_index(model, None)
    assert build_index(model, folder, batch_size=3, show_progress=False)["features"].shape == (4, 16)


def test_load_eval_data_names_a_batch_size_or_workers_it_cannot_take(tmp_path):
    """load_eval_data(batch_size=0) returned a loader that failed when iterated with a ZeroDivisionError,
    batch_size=-1 with '__len__() should return >= 0', 2.5 with a slice TypeError, workers="2" with a
    comparison TypeError: none named the argument, nor came at the call."""
    from alexnet.data.loaders import load_eval_data

    model = alexnet.load(tiny_checkpoint(tmp_path / "m.pt"))
    folder = tmp_path / "images"
    folder.mkdir()
    some_images(folder / "a")  # a folder of class folders
    for kwargs, said in (({"batch_size": 0}, "batch_size must be a whole number >= 1, got 0"),
                         ({"batch_size": -1}, "batch_size must be a whole number >= 1, got -1"),
                         ({"batch_size": 2.5}, "batch_size must be a whole number >= 1, got 2.5"),
                         ({"workers": "2"}, "workers must be a whole number >= 0, got '2'")):
        with pytest.raises(alexnet.ConfigError, match=f"^load_eval_data: {said}$"):
            load_eval_data(folder, model.preprocess, **kwargs)
    loader, classes, n, _ = load_eval_data(folder, model.preprocess, batch_size=3)
    assert n == 4 and [len(batch[0]) for batch in loader] == [3, 1]


def test_a_whole_pickled_model_is_refused_saying_how_to_save_one_load_reads(tmp_path):
    """torch.save(model) then alexnet.load said only that the file 'holds a alexnet.model.AlexNet object';
    the way it names, export_safetensors, gives back the same logits, classes and recipe."""
    from alexnet.export import export_safetensors

    model = alexnet.load(tiny_checkpoint(tmp_path / "m.pt"))
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(alexnet.CheckpointError, match=r"alexnet.model.AlexNet object.*export_safetensors\(model, path\)"):
        alexnet.load(tmp_path / "whole.pt")
    export_safetensors(model, tmp_path / "m.safetensors")
    again = alexnet.load(tmp_path / "m.safetensors")
    x = torch.randn(2, 3, 67, 67)
    assert torch.equal(again(x), model(x)) and again.classes == model.classes and again.preprocess == model.preprocess
    torch.save({"model": model.state_dict(), "recipe": model.preprocess}, tmp_path / "dict.pt")  # another of ours: no such hint
    with pytest.raises(alexnet.CheckpointError, match=r"Preprocess object, not only tensors and plain containers$"):
        alexnet.load(tmp_path / "dict.pt")


def test_evaluate_given_prepared_inputs_says_they_go_to_the_model(tmp_path):
    """A DataLoader over transforms() outputs (float inputs) given to evaluate said 'model_input takes uint8
    images ..., not torch.float32', naming a function the user never called; the same images as
    uint8 batches score, and the user's own loop over transforms() gives the same top-1."""
    from alexnet.evaluate import evaluate
    from alexnet.predict import load_image

    model = alexnet.load(tiny_checkpoint(tmp_path / "m.pt"))
    paths = some_images(tmp_path / "images")
    transform = model.preprocess.transforms()
    prepared = [(torch.stack([transform(p) for p in paths]), torch.tensor([0, 1, 2, 0]))]
    with pytest.raises(ValueError, match="^evaluate takes batches of uint8 images .* not torch.float32: inputs already prepared"):
        evaluate(model, prepared)
    stored = [(torch.stack([load_image(p, model.preprocess) for p in paths]), torch.tensor([0, 1, 2, 0]))]
    with torch.no_grad():
        own = (model(prepared[0][0]).argmax(1) == prepared[0][1]).float().mean().item()
    assert evaluate(model, stored, classes=["a", "b", "c"])["top1"] == pytest.approx(own)


def test_per_image_gradients_and_stacked_models_under_torch_func():
    """torch.func's recipes on a whole network: per-image gradients (vmap of grad, as for differential
    privacy) against one backward per image, and several models' weights stacked and run at once
    (stack_module_state + vmap, torch's model-ensembling tutorial) against each model's own forward."""
    from torch.func import functional_call, grad, stack_module_state, vmap

    torch.manual_seed(0)
    models = [create_model("alexnet_paper", num_classes=3, widths=(8, 8, 8, 8, 8), fc_width=16, input_size=67, dropout=0.0).eval()
              for _ in range(3)]
    model, x, y = models[0], torch.randn(4, 3, 67, 67) * 100, torch.tensor([0, 1, 2, 0])
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p: dict[str, torch.Tensor], image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(functional_call(model, p, (image[None],)), label[None])

    per_image = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(4):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(per_image[name][i], p.grad, rtol=1e-4, atol=1e-6 * p.grad.abs().max().item())
    stacked, buffers = stack_module_state(models)
    together = vmap(lambda p, b: functional_call(model, (p, b), (x,)))(stacked, buffers)
    with torch.no_grad():
        torch.testing.assert_close(together, torch.stack([m(x) for m in models]), rtol=1e-5, atol=1e-5)


def test_a_device_the_python_functions_cannot_use_is_named_as_their_argument(tmp_path):
    """alexnet.load(path, device=3) said '--device: unknown device '3'', an option a Python caller never
    gave; load, load_models, evaluate and predictor now name their device= argument, take an index as
    torch does (3 is cuda:3), refuse another type with a TypeError, and the command line still says --device."""
    from alexnet.evaluate import evaluate, load_models
    from alexnet.infer import predictor
    from alexnet.runtime import resolve_device

    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    model = alexnet.load(ckpt, device=torch.device("cpu"))
    calls = {"load": lambda d: alexnet.load(ckpt, device=d), "load_models": lambda d: load_models(ckpt, d),
             "evaluate": lambda d: evaluate(model, [], device=d), "predictor": lambda d: predictor(model, d)}
    for name, call in calls.items():
        for bad, said in ((1.0, "float 1.0"), (True, "bool True"), (-1, "int -1")):
            with pytest.raises(TypeError, match=rf"^{name}: device= takes a name \('cpu', 'cuda', 'cuda:1', 'mps', 'auto'\), "
                                                rf"a torch.device or a CUDA index, not {said}$"):
                call(bad)
        with pytest.raises(alexnet.ConfigError, match=rf"^{name}: device='gpu' is not a device this package runs on "
                                                      r"\(use auto, cpu, cuda, cuda:N or mps\)$"):
            call("gpu")
        if not torch.cuda.is_available():
            with pytest.raises(alexnet.ConfigError, match=rf"^{name}: device='cuda:1': no CUDA device is available on this machine$"):
                call("cuda:1")
            with pytest.raises(alexnet.ConfigError, match=rf"^{name}: device='cuda:3': no CUDA device is available on this machine$"):
                call(3)  # torch's meaning of an index: torch.device(3) is cuda:3
    with pytest.raises(alexnet.ConfigError, match=r"^--device: unknown device 'gpu' \(use auto, cpu, cuda, cuda:N or mps\)$"):
        resolve_device("gpu")


def test_a_checkpoint_read_without_enough_memory_is_not_called_damaged(tmp_path, monkeypatch, capsys):
    """torch.load failing for want of memory (its CPU allocator's RuntimeError, as a 244 MB checkpoint
    under a memory limit gave it, or a MemoryError) was reported as 'a zip archive but not a readable
    PyTorch checkpoint': the file is whole. Now a MemoryError naming the file, and on the command line
    one line saying so (exit 1); junk is still named as junk (a truncated zip: torch.load's OSError)."""
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    torn = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
                        "to allocate 150994944 bytes. Error code 12 (Cannot allocate memory)")
    for error, kind, said in ((torn, MemoryError, f"out of CPU memory (it tried to allocate 144 MiB) reading {ckpt}"),
                              (MemoryError(), MemoryError, f"out of CPU memory reading {ckpt}")):
        def fail(*args: object, error: Exception = error, **kwargs: object) -> None:
            raise error

        monkeypatch.setattr(torch, "load", fail)
        with pytest.raises(kind) as caught:
            alexnet.load(ckpt)
        assert not isinstance(caught.value, alexnet.CheckpointError) and said in str(caught.value) and str(ckpt) in str(caught.value)
        capsys.readouterr()
        assert main(["summary", "--checkpoint", str(ckpt)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("alexnet: error: ") and said in err and str(ckpt) in err and len(err.splitlines()) == 1, err
    monkeypatch.undo()
    (tmp_path / "half.pt").write_bytes(ckpt.read_bytes()[:3000])
    with pytest.raises(alexnet.CheckpointError, match="a zip archive but not a readable PyTorch checkpoint"):
        alexnet.load(tmp_path / "half.pt")
