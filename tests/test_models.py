import pytest
import torch

from fedcomp.models import MODELS, build_model


def _params(m):
    return sum(p.numel() for p in m.parameters())


def test_lenet5_caffe_matches_the_surp_paper():
    m = build_model("lenet5_caffe", (1, 28, 28), 10)
    assert _params(m) == 431_080
    shapes = [tuple(p.shape) for p in m.parameters()]
    assert shapes == [(20, 1, 5, 5), (20,), (50, 20, 5, 5), (50,), (500, 800), (500,), (10, 500), (10,)]


@pytest.mark.parametrize(
    "name, params",
    [("resnet20", 269_722), ("resnet56", 853_018), ("vgg16_bn", 14_724_042), ("resnet18", 11_173_962)],
)
def test_cifar_models_have_the_published_sizes(name, params):
    m = build_model(name, (3, 32, 32), 10)
    assert _params(m) == params


def test_resnet_option_a_shortcuts_have_no_parameters():
    m = build_model("resnet20", (3, 32, 32), 10)
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert len(convs) == 19  # 1 stem + 9 blocks × 2: no projection convolutions


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_runs_forward_and_backward(name):
    if name == "leaf_lstm":  # token ids in, one logit per vocabulary symbol out
        m = build_model(name, (80,), 10, {"hidden": 16})
        out = m(torch.randint(0, 10, (2, 80)))
    else:
        shape = (1, 28, 28) if name in ("lenet5_caffe", "mlp") else (3, 32, 32)
        m = build_model(name, shape, 10)
        out = m(torch.randn(2, *shape))
    assert out.shape == (2, 10)
    out.sum().backward()
