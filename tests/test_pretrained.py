"""Published ImageNet weights: create_model(..., pretrained=True), torch.hub, `alexnet import` without a file.

No test touches the internet: torchvision's file is put where torch.hub caches it (as a user with
torchvision's copy has it), and downloads are of file:// addresses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import pytest
import torch
import torchvision
from conftest import ROOT
from test_interop import CLASSES, WIDTHS, caffe_weights, write_caffemodel

import alexnet
from alexnet import pretrained
from alexnet.cli import main
from alexnet.predict import predict


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """torch.hub's cache folder for published weights, empty, under tmp_path."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    assert torch.hub.get_dir() == str(tmp_path / "torch" / "hub")
    return folder


@pytest.fixture
def torchvision_file(hub, monkeypatch):
    """torchvision's alexnet (its own code and init, seeded) saved under the published file's name,
    its sha256 the 'published' one (a cached file is checked against it)."""
    torch.manual_seed(0)
    reference = torchvision.models.alexnet().eval()
    hub.mkdir(parents=True)
    path = hub / "alexnet-owt-7be5be79.pth"
    torch.save(reference.state_dict(), path)
    digest = ("sha256", hashlib.sha256(path.read_bytes()).hexdigest())
    monkeypatch.setitem(pretrained.PRETRAINED, "alexnet_owt", dataclasses.replace(pretrained.PRETRAINED["alexnet_owt"], digest=digest))
    return reference


def test_pretrained_owt_is_torchvisions_network_ready_to_use(torchvision_file, tmp_path):
    model = alexnet.create_model("alexnet_owt", pretrained=True).eval()
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), torchvision_file(x), rtol=0, atol=1e-5)
    assert model.classes == list(torchvision.models.AlexNet_Weights.IMAGENET1K_V1.meta["categories"])
    assert model.preprocess.mean == pytest.approx((123.675, 116.28, 103.53))  # ImageNet's, 0-255 scale
    assert model.pretrained_cfg.url == "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
    assert alexnet.create_model("alexnet_owt").pretrained_cfg is None
    # Ready for the commands' Python API: predict takes the model as it comes.
    from PIL import Image

    Image.new("RGB", (300, 240), (200, 30, 30)).save(tmp_path / "red.jpg")
    (result,) = predict(model, [str(tmp_path / "red.jpg")], top=3)
    assert [t["class"] for t in result["top"]][0] in model.classes

    # Another class count: every layer but fc8 keeps the published weights, classes are numbered.
    ten = alexnet.create_model("alexnet_owt", num_classes=10, pretrained=True)
    assert ten.fc8.weight.shape == (10, 4096) and ten.classes == [str(i) for i in range(10)]
    assert torch.equal(ten.fc7.weight, torchvision_file.classifier[4].weight)
    assert torch.equal(ten.conv1.weight, torchvision_file.features[0].weight)
    # torch.hub, as a clone is used
    hubbed = torch.hub.load(str(ROOT), "alexnet_owt", source="local", pretrained=True, trust_repo=True)
    assert torch.equal(hubbed.fc8.weight, torchvision_file.classifier[6].weight)


def test_pretrained_options_that_change_the_weights_and_models_without_weights(torchvision_file):
    with pytest.raises(alexnet.ConfigError, match=r"in_chans=1 does not fit the published weights: conv1.weight is \[64, 3, 11, 11\]"):
        alexnet.create_model("alexnet_owt", pretrained=True, in_chans=1)
    model = alexnet.create_model("alexnet_owt", pretrained=True, dropout=0.2)  # no weight changes shape
    assert model.drop6.p == 0.2
    for name in ("alexnet_paper", "alexnet_paper_1gpu", "alexnet_small"):
        with pytest.raises(alexnet.ConfigError, match=f"^{name}: no published ImageNet weights .*alexnet_owt .*alexnet_caffe"):
            alexnet.create_model(name, pretrained=True)
    with pytest.raises(alexnet.ConfigError, match="pretrained must be True or False"):
        alexnet.create_model("alexnet_owt", pretrained="alexnet-owt-7be5be79.pth")
    with pytest.raises(ValueError, match="pretrained cannot change a network loaded from checkpoint="):
        torch.hub.load(str(ROOT), "alexnet_owt", source="local", pretrained=True, checkpoint="x.pt", trust_repo=True)


def test_torchvisions_weights_argument_asks_for_the_same_weights(torchvision_file):
    """torchvision's spelling, weights=..., as its users write it: a name, "DEFAULT" or its enum member."""
    tv = torchvision.models.AlexNet_Weights
    for weights in ("IMAGENET1K_V1", "DEFAULT", "AlexNet_Weights.IMAGENET1K_V1", tv.IMAGENET1K_V1, tv.DEFAULT):
        model = alexnet.create_model("alexnet_owt", weights=weights)
        assert torch.equal(model.conv1.weight, torchvision_file.features[0].weight), weights
        assert model.pretrained_cfg is not None
    hubbed = torch.hub.load(str(ROOT), "alexnet_owt", source="local", weights="DEFAULT", trust_repo=True)
    assert torch.equal(hubbed.fc8.weight, torchvision_file.classifier[6].weight)
    fresh = alexnet.create_model("alexnet_owt", weights=None)
    assert fresh.pretrained_cfg is None and not torch.equal(fresh.conv1.weight, torchvision_file.features[0].weight)
    with pytest.raises(alexnet.ConfigError, match=r"^alexnet_owt: unknown weights='IMAGENET1K_V2'; use weights='IMAGENET1K_V1' or"):
        alexnet.create_model("alexnet_owt", weights="IMAGENET1K_V2")
    with pytest.raises(alexnet.ConfigError, match=r"^alexnet_caffe: weights=AlexNet_Weights.IMAGENET1K_V1 are not alexnet_caffe's"):
        alexnet.create_model("alexnet_caffe", weights=tv.IMAGENET1K_V1)
    with pytest.raises(alexnet.ConfigError, match="^alexnet_paper: no published ImageNet weights"):
        alexnet.create_model("alexnet_paper", weights="DEFAULT")
    with pytest.raises(ValueError, match="weights cannot change a network loaded from checkpoint="):
        torch.hub.load(str(ROOT), "alexnet_owt", source="local", weights="DEFAULT", checkpoint="x.pt", trust_repo=True)


@pytest.fixture
def caffe_source(tmp_path, monkeypatch):
    """A (thin) bvlc_alexnet.caffemodel served from a file:// address, its sha1 the 'published' one."""
    weights = caffe_weights()
    source = tmp_path / "server" / "bvlc_alexnet.caffemodel"
    source.parent.mkdir()
    write_caffemodel(source, weights, v1=False)
    digest = ("sha1", hashlib.sha1(source.read_bytes()).hexdigest())
    published = dataclasses.replace(pretrained.PRETRAINED["alexnet_caffe"], url=source.as_uri(), digest=digest)
    monkeypatch.setitem(pretrained.PRETRAINED, "alexnet_caffe", published)
    return source, weights


def test_pretrained_caffe_is_downloaded_once_and_checked(hub, caffe_source, capsys):
    source, weights = caffe_source
    model = alexnet.create_model("alexnet_caffe", num_classes=CLASSES, pretrained=True)
    assert (hub / "bvlc_alexnet.caffemodel").read_bytes() == source.read_bytes()
    assert model.config.widths == WIDTHS and model.config.input_size == 227
    # BVLC's BGR conv1 taken to RGB; the file's other layers as they are
    assert torch.equal(model.conv1.weight, torch.from_numpy(weights["conv1"][0]).flip(1))
    assert torch.equal(model.fc7.weight, torch.from_numpy(weights["fc7"][0]))
    assert model.preprocess.std == (1.0, 1.0, 1.0)  # Caffe's raw 0-255 pixels minus the mean
    source.unlink()  # the cached file serves from now on
    again = alexnet.create_model("alexnet_caffe", num_classes=CLASSES, pretrained=True)
    assert torch.equal(again.fc8.weight, model.fc8.weight)

    # The command line: `alexnet import caffe` without a file takes the same one.
    assert main(["import", "caffe", "--out", str(hub.parent / "caffe.pt"), "--progress", "off"]) == 0
    assert "bvlc_alexnet.caffemodel -> " in capsys.readouterr().out
    assert torch.equal(alexnet.load(hub.parent / "caffe.pt").conv1.weight, model.conv1.weight)


def test_a_download_that_does_not_match_its_digest_is_not_kept(hub, caffe_source, monkeypatch, capsys):
    source, _ = caffe_source
    wrong = dataclasses.replace(pretrained.PRETRAINED["alexnet_caffe"], digest=("sha1", "9116a64c0fbe4459d18f4bb6b56d647b63920377"))
    monkeypatch.setitem(pretrained.PRETRAINED, "alexnet_caffe", wrong)
    with pytest.raises(alexnet.CheckpointError, match=r"sha1 is [0-9a-f]{40}, not the published 9116a64c.*: not kept"):
        alexnet.create_model("alexnet_caffe", pretrained=True)
    assert not hub.exists() or os.listdir(hub) == []  # neither the file nor a temporary

    # Offline: one line naming the address and where to put the file by hand.
    offline = dataclasses.replace(wrong, url="http://127.0.0.1:9/bvlc_alexnet.caffemodel")  # nothing listens there
    monkeypatch.setitem(pretrained.PRETRAINED, "alexnet_caffe", offline)
    assert main(["import", "caffe", "--out", str(hub.parent / "c.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("alexnet: error: cannot download http://127.0.0.1:9/bvlc_alexnet.caffemodel"), err
    assert err[0].endswith(f"copy the file there by hand: {hub / 'bvlc_alexnet.caffemodel'})"), err
    assert not (hub.parent / "c.pt").exists()


def test_a_cache_that_cannot_be_written_says_so_not_to_copy_the_file_there(tmp_path, caffe_source, monkeypatch, capsys):
    """A read-only home (a cluster's, a container's): 'alexnet import caffe' said 'cannot download URL:
    Read-only file system (without the internet, copy the file there by hand: ~/.cache/...)', a
    network failure and a place nothing can be copied to; it now names the folder and TORCH_HOME."""
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "file" / "torch"))  # unwritable, even for root
    assert main(["import", "caffe", "--out", str(tmp_path / "c.pt"), "--progress", "off"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"alexnet: error: cannot save {caffe_source[0].as_uri()} to {tmp_path / 'file'}"), err
    assert err[0].endswith("; set TORCH_HOME to a writable folder (torch.hub's cache), or pass a downloaded copy of the file"), err
    assert not (tmp_path / "c.pt").exists()


def test_models_lists_the_published_weights(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "ImageNet weights: torchvision (AlexNet_Weights.IMAGENET1K_V1), top-1 56.5% / top-5 79.1%" in out
    assert "ImageNet weights: BVLC (Caffe model zoo, bvlc_alexnet), top-1 57.1% / top-5 80.2%" in out
    assert out.count("ImageNet weights") == 2


def test_torchvisions_own_file_loads_as_a_checkpoint(torchvision_file, hub, tmp_path, capsys):
    """alexnet.load, the commands and torch.hub read torchvision's file as 'alexnet import' does (they
    said "no 'model_config'; build the model yourself")."""
    from PIL import Image

    path = hub / "alexnet-owt-7be5be79.pth"
    model = alexnet.load(path)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(x), torchvision_file(x), rtol=0, atol=1e-5)
    assert model.classes[0] == "tench" and model.preprocess.preset == "torchvision"
    Image.new("RGB", (256, 256), (30, 200, 30)).save(tmp_path / "green.jpg")
    assert main(["predict", str(tmp_path / "green.jpg"), "--checkpoint", str(path), "--top", "2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["top"]) == 2
    hubbed = torch.hub.load(str(ROOT), "alexnet_owt", source="local", checkpoint=str(path), trust_repo=True)
    assert torch.equal(hubbed.conv1.weight, torchvision_file.features[0].weight)
    # NaN in it: named by the file's own tensor names, by every reader of the file
    damaged = torch.load(path, weights_only=True)
    damaged["classifier.4.bias"][3] = float("nan")
    torch.save(damaged, tmp_path / "nan.pth")
    said = f"{tmp_path / 'nan.pth'}: weights hold NaN or inf: classifier.4.bias (1 of 4,096 values); refused"
    with pytest.raises(alexnet.CheckpointError) as caught:
        alexnet.load(tmp_path / "nan.pth")
    assert str(caught.value) == said
    capsys.readouterr()
    assert main(["import", "torchvision", str(tmp_path / "nan.pth"), "--out", str(tmp_path / "n.pt")]) == 2
    assert capsys.readouterr().err.strip() == f"alexnet: error: {said}"
    # Another network's bare state dict is still refused in words
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "other.pth")
    with pytest.raises(alexnet.CheckpointError, match="no 'model_config'"):
        alexnet.load(tmp_path / "other.pth")


def test_export_to_torchvisions_own_format(torchvision_file, hub, tmp_path, capsys):
    """`alexnet export --out F.pth` writes a state dict torchvision's alexnet loads, for alexnet_owt
    networks only; a recipe other than torchvision's normalisation is warned about."""
    from alexnet.export import export

    assert main(["import", "torchvision", "--out", str(tmp_path / "owt.pt")]) == 0
    assert main(["export", "--checkpoint", str(tmp_path / "owt.pt"), "--out", str(tmp_path / "back.pth")]) == 0
    assert "wrote " in capsys.readouterr().out
    theirs = torchvision.models.alexnet().eval()
    theirs.load_state_dict(torch.load(tmp_path / "back.pth", weights_only=True))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), torchvision_file(x), rtol=0, atol=0)  # the very weights it started from

    model = alexnet.load(tmp_path / "owt.pt")
    model.preprocess = dataclasses.replace(model.preprocess, std=(1.0, 1.0, 1.0))
    with pytest.warns(UserWarning, match=r"holds weights alone, .* 'torchvision' recipe \(mean \(123.7, 116.3, 103.5\), std \(1.0"):
        export(model, None, tmp_path / "raw.pth")
    paper = alexnet.create_model("alexnet_paper", num_classes=3)
    with pytest.raises(alexnet.ConfigError, match=r"torchvision's alexnet has alexnet_owt's layers .* this network \(alexnet_paper"):
        export(paper, "torchvision", tmp_path / "paper.pth")
    assert not (tmp_path / "paper.pth").exists()
    # alexnet_owt fine-tuned at another input size is still torchvision's network (both pool adaptively
    # to 6x6): it was refused as "alexnet_owt with input_size=112" (helper 32); the same outputs there.
    small = alexnet.create_model("alexnet_owt", num_classes=5, input_size=112).eval()
    export(small, "torchvision", tmp_path / "small.pth")
    theirs = torchvision.models.alexnet(num_classes=5).eval()
    theirs.load_state_dict(torch.load(tmp_path / "small.pth", weights_only=True))
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), small(x), rtol=0, atol=0)


def test_export_to_torchvisions_format_names_what_torchvision_has_otherwise(tmp_path, capsys):
    """An alexnet_owt of other widths (a quick try at small sizes) is rightly refused as a .pth, but the
    line said "torchvision's alexnet has alexnet_owt's layers (RGB); this network is alexnet_owt with ...":
    refused for being what it was asked to be. The line names each option that differs with torchvision's
    value, read here from torchvision's own network."""
    from test_evaluate import PRE, cli_fails

    from alexnet.checkpoint import save_atomic

    m = alexnet.create_model("alexnet_owt", num_classes=3, widths=(8, 16, 16, 16, 16), fc_width=32, input_size=64)
    ckpt = tmp_path / "small_owt.pt"
    save_atomic({"model": m.state_dict(), "model_config": m.config.to_dict(), "classes": ["a", "b", "c"], "preprocess": PRE}, ckpt)
    tv = torchvision.models.alexnet(num_classes=3)
    widths = tuple(c.out_channels for c in tv.features if isinstance(c, torch.nn.Conv2d))
    fc_width = tv.classifier[1].out_features
    err = cli_fails(capsys, "export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.pth"))
    assert f"(widths={widths}, fc_width={fc_width})" in err, err
    assert "has widths=(8, 16, 16, 16, 16), fc_width=32:" in err, err
    assert not (tmp_path / "m.pth").exists()


def test_a_cached_file_that_is_not_the_published_one_is_refused(torchvision_file, hub, tmp_path, capsys):
    """A file already in torch.hub's cache (copied there by hand, as the offline error says) was taken
    unchecked: other weights of the same shapes loaded as the published ones, a truncated copy failed
    as 'not a PyTorch checkpoint'. Each is now refused in one line naming the file, its digest (by
    hashlib here) and the remedy; the matching file loads."""
    path = hub / "alexnet-owt-7be5be79.pth"
    good = path.read_bytes()
    assert torch.equal(alexnet.create_model("alexnet_owt", pretrained=True).conv1.weight, torchvision_file.features[0].weight)
    torch.manual_seed(1)
    torch.save(torchvision.models.alexnet().state_dict(), path)  # other weights, the same shapes
    damaged = {"others": path.read_bytes(), "truncated": good[: len(good) // 2]}
    for what, content in damaged.items():
        path.write_bytes(content)
        said = (f"{path}: its sha256 is {hashlib.sha256(content).hexdigest()}, not the published "
                f"{pretrained.PRETRAINED['alexnet_owt'].digest[1]}: a truncated, damaged or other file")
        with pytest.raises(alexnet.CheckpointError) as caught:
            alexnet.create_model("alexnet_owt", pretrained=True)
        assert str(caught.value).startswith(said), what
        capsys.readouterr()
        assert main(["import", "torchvision", "--out", str(tmp_path / "owt.pt")]) == 2, what
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"alexnet: error: {said}") and "delete it" in err[0], err
        assert not (tmp_path / "owt.pt").exists()
    path.write_bytes(good)
    assert main(["import", "torchvision", "--out", str(tmp_path / "owt.pt")]) == 0
