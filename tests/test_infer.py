"""alexnet.infer.predictor: the fast inference path gives the model's own answers."""

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
