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
