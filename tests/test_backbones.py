"""Backbone loading without network: fake 'pretrained' checkpoints are seeded torchvision
models saved under the real file names, so values can be compared with torchvision."""

import hashlib
import socket
from pathlib import Path

import pytest
import torch
import torchvision

from trainables import backbones as bb
from trainables.backbones import SPECS, WeightSpec


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.delenv(bb.ENV_VAR, raising=False)


@pytest.fixture
def x():
    g = torch.Generator().manual_seed(123)
    return torch.rand(1, 3, 32, 32, generator=g)


def _seeded(builder, seed):
    torch.manual_seed(seed)
    return builder(weights=None).eval()


def _imagenet_norm(x):
    mean = torch.tensor(bb.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(bb.IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory):
    """Checkpoints for vgg19 / resnet50 / alexnet written by seeded torchvision models."""
    d = tmp_path_factory.mktemp("weights")
    refs = {}
    for key, builder, seed in [
        ("vgg19", torchvision.models.vgg19, 1),
        ("resnet50", torchvision.models.resnet50, 2),
        ("alexnet", torchvision.models.alexnet, 3),
    ]:
        refs[key] = _seeded(builder, seed)
        if key == "resnet50":  # non-trivial BN running stats so the test sees them used
            for m in refs[key].modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
        torch.save(refs[key].state_dict(), d / SPECS[key].filename)
    return d, refs


# ---------------------------------------------------------------- specs and directories
def test_specs_from_torchvision_enums():
    assert SPECS["vgg19"].filename == "vgg19-dcbb9e9d.pth"
    assert SPECS["vgg19"].hash_prefix == "dcbb9e9d"
    assert SPECS["resnet50"].url == torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url
    assert SPECS["alexnet"].hash_prefix == SPECS["alexnet"].filename[-12:-4]


def test_default_dir_honours_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert bb.default_weights_dir() == tmp_path / "th" / "hub" / "checkpoints"
    assert bb.resolve_weights_dir(None) == tmp_path / "th" / "hub" / "checkpoints"


def test_env_var_then_configured_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(bb.ENV_VAR, str(tmp_path / "env"))
    assert bb.resolve_weights_dir(None) == tmp_path / "env"
    assert bb.resolve_weights_dir(tmp_path / "cfg") == tmp_path / "cfg"


# ---------------------------------------------------------------- missing / broken files
@pytest.mark.parametrize(
    "build",
    [
        lambda d: bb.load_state_dict("vgg19", d),
        lambda d: bb.check_available(["vgg19", "resnet50"], d),
        lambda d: bb.VGGFeatures(["relu1_1"], "pretrained", weights_dir=d),
        lambda d: bb.ResNetFeatures(1, "pretrained", weights_dir=d),
    ],
)
def test_missing_weights_one_line_message(tmp_path, build):
    with pytest.raises(bb.WeightsNotFoundError) as err:
        build(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg
    assert "vgg19-dcbb9e9d.pth" in msg or "resnet50-0676ba61.pth" in msg
    assert f"(searched {tmp_path})" in msg
    assert "srsweep weights fetch" in msg and "weights: random" in msg
    assert isinstance(err.value, FileNotFoundError)


def test_missing_weights_via_env_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(bb.ENV_VAR, str(tmp_path))
    with pytest.raises(bb.WeightsNotFoundError, match="alexnet-owt-7be5be79.pth"):
        bb.load_state_dict("alexnet")


def test_corrupt_file_is_one_line_value_error(tmp_path):
    (tmp_path / SPECS["resnet50"].filename).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError) as err:
        bb.load_state_dict("resnet50", tmp_path)
    assert "\n" not in str(err.value) and SPECS["resnet50"].filename in str(err.value)


def test_wrong_checkpoint_names_file(tmp_path):
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / SPECS["vgg19"].filename)
    with pytest.raises(ValueError, match="vgg19-dcbb9e9d.pth") as err:
        bb.VGGFeatures(["conv1_1"], "pretrained", weights_dir=tmp_path)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- verify / fetch
def _toy(tmp_path, content=b"toy weights"):
    prefix = hashlib.sha256(content).hexdigest()[:8]
    spec = WeightSpec("Toy", f"https://example.invalid/models/toy-{prefix}.pth")
    return spec, content


def test_verify_ok_missing_mismatch(tmp_path):
    good, content = _toy(tmp_path)
    bad = WeightSpec("Bad", "https://example.invalid/models/bad-00000000.pth")
    gone = WeightSpec("Gone", "https://example.invalid/models/gone-12345678.pth")
    (tmp_path / good.filename).write_bytes(content)
    (tmp_path / bad.filename).write_bytes(content)
    res = {r.key: r for r in bb.verify(tmp_path, specs={"a": good, "b": bad, "c": gone})}
    assert [res[k].status for k in "abc"] == ["ok", "hash-mismatch", "missing"]
    assert res["a"].sha256 == hashlib.sha256(content).hexdigest() and res["a"].ok
    assert res["c"].path == tmp_path / gone.filename


def test_verify_real_specs_missing(tmp_path):
    assert [r.status for r in bb.verify(tmp_path)] == ["missing"] * 3


def test_fetch_skips_verified_file_offline(tmp_path):
    spec, content = _toy(tmp_path)
    (tmp_path / spec.filename).write_bytes(content)
    # download_url_to_file raises (autouse fixture): reaching it fails the test.
    assert bb.fetch(tmp_path, specs={"toy": spec}) == [tmp_path / spec.filename]


def test_fetch_redownloads_mismatched_file(tmp_path, monkeypatch):
    spec, content = _toy(tmp_path)
    (tmp_path / spec.filename).write_bytes(b"stale")
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        Path(dst).write_bytes(content)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    out = tmp_path / "new"
    bb.fetch(out, specs={"toy": spec})
    bb.fetch(tmp_path, specs={"toy": spec})
    assert calls == [(spec.url, spec.hash_prefix)] * 2
    assert (out / spec.filename).read_bytes() == content
    with pytest.raises(ValueError, match="valid"):
        bb.fetch(tmp_path, keys=["nope"], specs={"toy": spec})


# ---------------------------------------------------------------- pretrained values
def test_vgg_pretrained_matches_torchvision(fake_dir, x):
    d, refs = fake_dir
    m = bb.VGGFeatures(["relu2_1", "conv5_4"], "pretrained", weights_dir=d)
    out = m(x)
    assert list(out) == ["relu2_1", "conv5_4"]
    with torch.no_grad():
        ref = refs["vgg19"].features[:35](_imagenet_norm(x))
        ref_relu21 = refs["vgg19"].features[:7](_imagenet_norm(x))
    assert torch.allclose(out["conv5_4"], ref, rtol=1e-4, atol=1e-5)
    assert torch.allclose(out["relu2_1"], ref_relu21, rtol=1e-4, atol=1e-5)
    assert m.info == {"backbones": "imagenet"}


def test_resnet_pretrained_matches_torchvision(fake_dir, x):
    d, refs = fake_dir
    r = refs["resnet50"]
    with torch.no_grad():
        h = r.maxpool(r.relu(r.bn1(r.conv1(_imagenet_norm(x)))))
        ref = r.layer2(r.layer1(h))
    m = bb.ResNetFeatures(2, "pretrained", weights_dir=d)
    assert not any(isinstance(k, torch.nn.BatchNorm2d) for k in m.modules())  # folded into the convs
    out = m(x)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5)
    # The DP authors' released code: stages 1..m on the raw [0, 1] image, no ImageNet stats.
    with torch.no_grad():
        h = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        raw = [r.layer1(h)]
        raw.append(r.layer2(raw[0]))
    outs = bb.ResNetFeatures(2, "pretrained", weights_dir=d, all_stages=True, normalize=False)(x)
    assert len(outs) == 2 and all(torch.allclose(o, e, rtol=1e-4, atol=1e-5) for o, e in zip(outs, raw))


def test_lpips_alexnet_copy(fake_dir, x):
    d, refs = fake_dir
    tv_features = refs["alexnet"].features
    model = bb.build_lpips("pretrained", weights_dir=d)
    for key, value in model.net.state_dict().items():
        assert torch.equal(value, tv_features.state_dict()[key.split(".", 1)[1]]), key
    with torch.no_grad():
        assert torch.allclose(model.net(x).relu5, tv_features[:12](x), atol=1e-6)
        y = x.flip(-1)
        d_pre = model(x, y, normalize=True).item()
        d_rand = bb.build_lpips("random", seed=0)(x, y, normalize=True).item()
    assert d_pre > 0 and abs(d_pre - d_rand) > 1e-4
    assert not any(p.requires_grad for p in model.parameters())


# ---------------------------------------------------------------- random mode
def test_vgg_random_deterministic_and_rng_untouched(x):
    state = torch.get_rng_state()
    a = bb.VGGFeatures(["conv3_1"], "random", seed=5)(x)["conv3_1"]
    assert torch.equal(torch.get_rng_state(), state)
    b = bb.VGGFeatures(["conv3_1"], "random", seed=5)(x)["conv3_1"]
    c = bb.VGGFeatures(["conv3_1"], "random", seed=6)(x)["conv3_1"]
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_resnet_random_deterministic(x):
    a, b, c = (bb.ResNetFeatures(1, "random", seed=s)(x) for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_lpips_random_deterministic(x):
    y = x.flip(-2)
    with torch.no_grad():
        a, b, c = (bb.build_lpips("random", seed=s)(x, y).item() for s in (3, 3, 4))
    assert a == b and a != c


def test_preactivation_and_frozen(x):
    m = bb.VGGFeatures(["conv5_4", "relu5_4"], "random", seed=0)
    out = m(x)
    assert (out["conv5_4"] < 0).any()  # not overwritten by an inplace ReLU
    assert (out["relu5_4"] >= 0).all()
    assert torch.equal(out["relu5_4"], out["conv5_4"].clamp_min(0))
    assert all(not p.requires_grad for p in m.parameters())
    m.train()
    assert not m.training and m.info == {"backbones": "random-init"}


def test_truncation(x):
    m = bb.VGGFeatures(["conv5_4"], "random")
    assert len(m.features) == 35 and isinstance(m.features[-1], torch.nn.Conv2d)
    assert all(not getattr(l, "inplace", False) for l in m.features)
    assert len(bb.VGGFeatures(["relu1_1"], "random").features) == 2
    r = bb.ResNetFeatures(1, "random")
    assert not hasattr(r.body, "layer2") and not hasattr(r.body, "fc")
    assert not any("layer2" in k or "fc" in k for k in r.state_dict())
    assert r(x).shape == (1, 256, 8, 8)
    r3 = bb.ResNetFeatures(3, "random")
    assert hasattr(r3.body, "layer3") and not hasattr(r3.body, "layer4")


def test_layer_names():
    names = bb.vgg19_layer_names()
    assert len(names) == 37
    assert (names.index("conv1_1"), names.index("conv5_4"), names.index("relu5_4"), names.index("pool5")) == (
        0,
        34,
        35,
        36,
    )
    assert names[:5] == ("conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1")


def test_bad_arguments():
    with pytest.raises(ValueError, match="conv5_4"):
        bb.VGGFeatures(["conv6_1"], "random")
    with pytest.raises(ValueError, match="weights mode"):
        bb.VGGFeatures(["conv1_1"], "imagenet")
    with pytest.raises(ValueError):
        bb.ResNetFeatures(5, "random")
    with pytest.raises(ValueError):
        bb.build_info("nope")
    with pytest.raises(ValueError, match="valid"):
        bb.load_state_dict("vgg16")


def test_shape_mismatch_names_file_and_key(tmp_path):
    torch.save(
        {"features.0.weight": torch.zeros(2, 2), "features.0.bias": torch.zeros(64)},
        tmp_path / SPECS["alexnet"].filename,
    )
    with pytest.raises(ValueError) as err:
        bb.build_lpips("pretrained", weights_dir=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "alexnet-owt-7be5be79.pth" in msg and "0.weight" in msg
