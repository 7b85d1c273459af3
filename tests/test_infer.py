"""alexnet.infer.predictor: the fast inference path gives the model's own answers."""

from pathlib import Path

import pytest
import torch

from alexnet import create_model
from alexnet.infer import predictor


def test_predictor_matches_plain_forward():
    torch.manual_seed(0)
    model = create_model("alexnet_small", num_classes=10).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
    m2 = create_model("alexnet_small", num_classes=10)
    m2.load_state_dict(model.state_dict())
    out = predictor(m2, torch.device("cpu"), amp="none")(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_fp32_layers_run_in_float32_under_bf16():
    torch.manual_seed(1)
    model = create_model("alexnet_small", num_classes=10)
    seen = {}
    model.fc8.register_forward_hook(lambda m, i, o: seen.update(fc8=o.dtype))
    model.conv2.register_forward_hook(lambda m, i, o: seen.update(conv2=o.dtype))
    out = predictor(model, torch.device("cpu"), amp="bf16", fp32_layers=("fc6", "fc7", "fc8"))(torch.randn(2, 1, 28, 28))
    assert out.dtype == torch.float32
    assert seen == {"fc8": torch.float32, "conv2": torch.bfloat16}


def test_fp32_layers_unknown_name():
    with pytest.raises(ValueError, match="fc9"):
        predictor(create_model("alexnet_small"), torch.device("cpu"), fp32_layers=("fc9",))


def test_predict_and_retrieve_as_the_python_api_is_used(tmp_path):
    """One path alone is one image (not its characters); a synset folder names its true class as
    training named it, without a classes.tsv (Imagewoof's n02088364 is "beagle"); a bare network
    from create_model is refused in words, by retrieve as by predict and build_index."""
    from PIL import Image
    from test_evaluate import tiny_checkpoint

    import alexnet
    from alexnet.errors import DataError
    from alexnet.predict import predict
    from alexnet.retrieval import build_index, retrieve

    folder = tmp_path / "val" / "n02088364"
    folder.mkdir(parents=True)
    Image.new("RGB", (90, 70), (200, 120, 40)).save(folder / "dog.jpg")
    ckpt = torch.load(tiny_checkpoint(tmp_path / "m.pt"), weights_only=True)
    ckpt["classes"] = ["beagle", "basset", "Shih-Tzu"]
    torch.save(ckpt, tmp_path / "m.pt")
    model = alexnet.load(tmp_path / "m.pt")
    (result,) = predict(model, str(folder / "dog.jpg"))
    assert result["label"] == "beagle" and result["path"] == str(folder / "dog.jpg")
    index = build_index(model, tmp_path / "val")
    bare = alexnet.create_model("alexnet_small", num_classes=3)
    for call in (lambda: retrieve(bare, index, folder / "dog.jpg"), lambda: predict(bare, [folder]),
                 lambda: build_index(bare, tmp_path / "val")):
        with pytest.raises(DataError, match="no preprocessing recipe"):
            call()


def test_predict_names_the_true_class_of_an_ilsvrc_synset_folder(tmp_path):
    """Training names the 1000 ILSVRC synsets (sorted) by torchvision's categories, which takes all the
    sibling folders; predict's true class must do the same (it looked at the one folder alone)."""
    from PIL import Image
    from test_evaluate import tiny_checkpoint
    from torchvision.models import AlexNet_Weights

    import alexnet
    from alexnet.predict import predict

    categories = AlexNet_Weights.IMAGENET1K_V1.meta["categories"]
    for i in range(1000):
        (tmp_path / "val" / f"n{i:08d}").mkdir(parents=True)
    Image.new("RGB", (90, 70), (20, 120, 200)).save(tmp_path / "val" / "n00000500" / "x.jpg")
    ckpt = torch.load(tiny_checkpoint(tmp_path / "m.pt", classes=1000), weights_only=True)
    ckpt["classes"] = list(categories)
    torch.save(ckpt, tmp_path / "m.pt")
    (result,) = predict(alexnet.load(tmp_path / "m.pt"), tmp_path / "val" / "n00000500" / "x.jpg")
    assert result["label"] == categories[500]


def test_predict_labels_an_image_by_the_folder_training_lists_it_under(tmp_path):
    """The true class came from the link's target (a linked class folder, the README's way of making
    a subset, gave no label; a file linked into another class got its target's), and an image in a
    sub-folder of a class had none; training labels each by the class folder it is listed under."""
    from conftest import make_image_folder
    from test_evaluate import tiny_checkpoint

    import alexnet
    from alexnet.data.folder import find_classes, list_images
    from alexnet.predict import predict

    src = make_image_folder(tmp_path / "all", classes=3, per_class=2)
    subset = tmp_path / "subset"
    subset.mkdir()
    (subset / "class0").symlink_to(src / "class0", target_is_directory=True)
    (subset / "class1").mkdir()
    (subset / "class1" / "linked.jpg").symlink_to(src / "class0" / "img0.jpg")
    (subset / "class1" / "sub" / "deeper").mkdir(parents=True)
    (src / "class2" / "img0.jpg").rename(subset / "class1" / "sub" / "deeper" / "nested.jpg")
    trained = {Path(f).relative_to(subset): find_classes(subset)[0][c] for f, c in list_images(subset, find_classes(subset)[0])}
    model = alexnet.load(tiny_checkpoint(tmp_path / "m.pt", classes=3))
    model.classes = ["class0", "class1", "class2"]
    got = {Path(r["path"]).relative_to(subset): r["label"] for r in predict(model, subset)}
    assert got == trained and got[Path("class1", "linked.jpg")] == "class1", got
    assert got[Path("class1", "sub", "deeper", "nested.jpg")] == "class1"


def test_python_api_mistakes_are_named_not_answered_wrongly(tmp_path):
    """An API audit's findings: each of these ran to a wrong answer or an error about something else."""
    import copy

    from PIL import Image
    from test_evaluate import tiny_checkpoint

    import alexnet
    from alexnet.data.loaders import model_input
    from alexnet.errors import ConfigError, DataError
    from alexnet.evaluate import evaluate
    from alexnet.predict import predict
    from alexnet.retrieval import build_index, retrieve

    folder = tmp_path / "val" / "a"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (90, 70), (60 * i, 120, 40)).save(folder / f"{i}.jpg")
    model = alexnet.load(tiny_checkpoint(tmp_path / "m.pt"))
    images = torch.randint(0, 256, (3, 3, 76, 76), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))  # stored size
    labels = torch.tensor([0, 1, 2])

    # A float batch in [0, 1] (torchvision's ToTensor) was normalised as near-black: chance accuracy, no word.
    with pytest.raises(ValueError, match="evaluate takes batches of uint8 images .* not torch.float32"):
        evaluate(model, [(images.float() / 255, labels)], torch.device("cpu"))
    with pytest.raises(ValueError, match="uint8"):
        model_input(images.float(), labels, model.preprocess, False)
    # A generator of batches has no len(): it evaluates as the list does
    listed = evaluate(model, [(images, labels)], torch.device("cpu"))
    assert evaluate(model, ((images, labels) for _ in range(1)), torch.device("cpu"))["top1"] == listed["top1"]
    with pytest.raises(TypeError, match="not the path .*load_eval_data"):
        evaluate(model, str(tmp_path / "val"), torch.device("cpu"))
    with pytest.raises(DataError, match="no preprocessing recipe"):
        evaluate(alexnet.create_model("alexnet_small"), [(images, labels)], torch.device("cpu"))

    # fc8 replaced by hand: predict named classes of the old head, or failed in topk / evaluate in a reshape.
    by_hand = copy.deepcopy(model)
    by_hand.fc8 = torch.nn.Linear(16, 5)
    for call in (lambda: predict(by_hand, folder), lambda: evaluate(by_hand, [(images, labels)], torch.device("cpu"))):
        with pytest.raises(ConfigError, match=r"fc8 has 5 outputs but it names 3 classes .*reset_classifier\(5, classes="):
            call()
    tuned = copy.deepcopy(model)
    tuned.reset_classifier(2, ["cat", "dog"])
    assert tuned.fc8.weight.shape == (2, 16) and tuned.num_classes == 2 and tuned.config.num_classes == 2
    assert torch.equal(tuned.fc7.weight, model.fc7.weight) and tuned.fc8.weight.std() > 0
    assert {t["class"] for r in predict(tuned, folder, top=2) for t in r["top"]} == {"cat", "dog"}
    with pytest.raises(ConfigError, match="2 class names for 3 classes"):
        tuned.reset_classifier(3, ["cat", "dog"])

    # Queries and arguments predict and retrieve cannot take, in words
    index = build_index(model, tmp_path / "val")
    pil = Image.open(folder / "0.jpg")
    for call, said in [
        (lambda: predict(model, pil), r"images are given as paths .*not a PIL\..*Image"),
        (lambda: predict(model, [folder / "0.jpg", images]), "not a list holding a torch.Tensor"),
        (lambda: retrieve(model, index, pil), r"the query is the path of one image file, not a PIL\."),
    ]:
        with pytest.raises(TypeError, match=said):
            call()
    for call, said in [(lambda: predict(model, folder, top=0), "top must be a whole number >= 1, got 0"),
                       (lambda: retrieve(model, index, folder / "0.jpg", k=-1), "k must be a whole number >= 1, got -1")]:
        with pytest.raises(ValueError, match=said):
            call()
    with pytest.raises(DataError, match="a folder; retrieve takes one image file"):
        retrieve(model, index, folder)

    # Another model's fc7 space: the command line refused it, the Python call listed neighbours.
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.conv1.weight.normal_()
    with pytest.raises(DataError, match="is not the model that built the index: its fc7 space differs"):
        retrieve(other, index, folder / "0.jpg")
    assert len(retrieve(other, index, folder / "0.jpg", k=2, check=False)) == 2  # the caller's own choice
    assert retrieve(model, index, folder / "0.jpg", k=1)[0]["path"] == str(folder / "0.jpg")


def test_amp_and_device_in_either_form(tmp_path):
    """predict/evaluate took only a dtype and predictor only a name ('bf16' to predict was a TypeError
    inside autocast, torch.bfloat16 to predictor a '--amp' error, 'cpu' an AttributeError)."""
    from PIL import Image
    from test_evaluate import tiny_checkpoint

    import alexnet
    from alexnet.evaluate import evaluate
    from alexnet.predict import predict
    from alexnet.retrieval import build_index

    Image.new("RGB", (90, 70), (200, 120, 40)).save(tmp_path / "a.jpg")
    model = alexnet.load(tiny_checkpoint(tmp_path / "m.pt"))
    by_name, by_dtype = predict(model, tmp_path / "a.jpg", amp="bf16"), predict(model, tmp_path / "a.jpg", amp=torch.bfloat16)
    assert by_name == by_dtype and by_name != predict(model, tmp_path / "a.jpg")  # bf16 is not float32's answer
    assert build_index(model, tmp_path, amp="bf16")["precision"] == "bfloat16"
    images = torch.randint(0, 256, (2, 3, 76, 76), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batches = [(images, torch.tensor([0, 1]))]
    a, b = evaluate(model, batches, amp="none"), evaluate(model, batches, torch.device("cpu"))  # the model's device
    assert torch.equal(a.pop("confusion"), b.pop("confusion")) and a == b
    x = torch.randn(2, 3, 67, 67)
    torch.testing.assert_close(predictor(model, "cpu", amp=torch.bfloat16)(x), predictor(model, torch.device("cpu"), amp="bf16")(x))
    with pytest.raises(alexnet.ConfigError, match="amp: expected torch.bfloat16, torch.float16 or None, got torch.float64"):
        predict(model, tmp_path / "a.jpg", amp=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_a_model_cast_to_another_dtype_is_fed_its_dtype(tmp_path, dtype):
    """model.half() / .to(torch.bfloat16) / .double(), as torchvision users cast a network: predict,
    evaluate and fc7 said 'Input type (float) and bias type (c10::BFloat16) should be the same'."""
    from PIL import Image
    from test_evaluate import tiny_checkpoint

    import alexnet
    from alexnet.evaluate import evaluate
    from alexnet.predict import predict
    from alexnet.retrieval import fc7

    Image.new("RGB", (90, 70), (200, 120, 40)).save(tmp_path / "a.jpg")
    Image.new("RGB", (80, 80), (20, 90, 240)).save(tmp_path / "b.jpg")
    model = alexnet.load(tiny_checkpoint(tmp_path / "m.pt"))
    cast = alexnet.load(tmp_path / "m.pt").to(dtype)
    assert cast.dtype == dtype
    tol = 1e-6 if dtype == torch.float64 else 3e-2  # float64 is float32's answer; 8-bit mantissas are not
    for want, got in zip(predict(model, tmp_path), predict(cast, tmp_path)):
        assert [t["index"] for t in got["top"]] == [t["index"] for t in want["top"]]
        assert [t["probability"] for t in got["top"]] == pytest.approx([t["probability"] for t in want["top"]], abs=tol)
    images = torch.randint(0, 256, (4, 3, 76, 76), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batches = [(images, torch.tensor([0, 1, 2, 0]))]
    assert evaluate(cast, batches)["loss"] == pytest.approx(evaluate(model, batches)["loss"], rel=tol)
    scale = fc7(model, images).abs().max().item()
    torch.testing.assert_close(fc7(cast, images), fc7(model, images), rtol=0, atol=tol * 10 * scale)


def test_a_device_this_machine_lacks_is_named_in_python_too(tmp_path):
    """alexnet.load(..., device="cuda"), evaluate(device=...) and predictor(model, ...) on a machine
    without it gave torch's 'Found no NVIDIA driver on your system' (fit said it in one line)."""
    import alexnet
    from alexnet.checkpoint import save_atomic
    from alexnet.errors import ConfigError
    from alexnet.evaluate import evaluate

    model = create_model("alexnet_small", num_classes=3)
    save_atomic({"model": model.state_dict(), "model_config": model.config.to_dict(), "classes": list("abc")}, tmp_path / "m.pt")
    missing = ["gpu"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in missing:
        for call, args in ((alexnet.load, (tmp_path / "m.pt", device)), (predictor, (model, device)),
                           (evaluate, (model, [], device))):
            with pytest.raises(ConfigError, match=rf"device='{device}'"):  # their argument, not the CLI's --device
                call(*args)
    assert alexnet.load(tmp_path / "m.pt", device=torch.device("cpu")).fc8.weight.device.type == "cpu"


def test_a_checkpoint_path_where_a_model_goes_is_named():
    """predict('run/last.pt', ...) said "AttributeError: 'str' object has no attribute 'fc8'"."""
    from alexnet.evaluate import evaluate
    from alexnet.predict import predict
    from alexnet.retrieval import retrieve

    for call in (lambda: predict("run/last.pt", "a.jpg"), lambda: evaluate(["run/last.pt"], []),
                 lambda: retrieve("run/last.pt", {}, "q.jpg")):
        with pytest.raises(TypeError, match=r"^expected an AlexNet, got a builtins.str: alexnet.load\(checkpoint\) gives one$"):
            call()


def test_model_input_names_the_batch_its_recipe_takes(tmp_path):
    """model_input (README: how `x` is made) given photos' RGB batch for a grey recipe, a grey batch for
    an RGB one, or one unbatched image said "RuntimeError: shape '[3]' is invalid for input of size 1",
    "output with shape [2, 1, 73, 73] doesn't match the broadcast shape" or "not enough values to
    unpack": one ValueError now says what it takes. A fitting batch is normalised as the recipe says
    (float64 by hand: the centre crop minus the mean, over the std)."""
    import re

    from alexnet.data.loaders import model_input
    from alexnet.data.presets import Preprocess

    grey = Preprocess("fashion_mnist", (72.9,), (90.0,), 28, None, 28, 28, 28)
    rgb = Preprocess("image_folder", (120.0, 110.0, 100.0), (60.0, 61.0, 62.0), 40, 40, 32, 32, 32)
    g = torch.Generator().manual_seed(0)
    batch = lambda *shape: torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)  # noqa: E731
    for recipe, images, train in ((grey, batch(2, 3, 28, 28), False), (grey, batch(2, 3, 28, 28), True),
                                  (rgb, batch(2, 1, 40, 40), False), (rgb, batch(2, 1, 40, 40), True),
                                  (rgb, batch(3, 40, 40), False)):
        c = recipe.channels
        said = rf"^model_input takes a batch of {c}-channel images, shape \(B, {c}, H, W\), .*got {re.escape(str(tuple(images.shape)))}$"
        with pytest.raises(ValueError, match=said):
            model_input(images, torch.arange(len(images)), recipe, train)
    images = batch(2, 3, 40, 40)
    x = model_input(images, torch.arange(2), rgb, False).double()
    mean, std = torch.tensor(rgb.mean, dtype=torch.float64), torch.tensor(rgb.std, dtype=torch.float64)
    by_hand = (images[:, :, 4:36, 4:36].double() - mean.view(3, 1, 1)) / std.view(3, 1, 1)
    assert (x - by_hand).abs().max() < 1e-5


def test_predictor_prepares_the_callers_model_itself_as_documented():
    """predictor changes the model it is given, as its docstring says (a copy would cost the model's
    memory again): eval mode and, with channels_last, NHWC weights of the same values; a deepcopy
    given to it leaves the caller's model as it was."""
    import copy

    torch.manual_seed(0)
    model = create_model("alexnet_paper", num_classes=3, widths=(8, 8, 8, 8, 8), fc_width=16, input_size=67).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    predictor(copy.deepcopy(model), "cpu", amp="none")
    assert model.training and model.conv2.weight.is_contiguous()
    predictor(model, "cpu", amp="none")
    assert not model.training and model.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    assert not model.conv2.weight.is_contiguous()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
