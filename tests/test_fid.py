"""diffgen.measures.fid: the Inception plumbing on torch-fidelity's architecture at random initialisation (input conversion,
resizing, dtype, device, batching, grey images), the weights file's checksum, the classifier fallback, and FID/KID
against closed forms and independent references. Inception runs at 299 x 299 on the CPU: few images per test."""
from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import torch
from torch import nn

from diffgen.commands import cli
from diffgen.measures import fid
from diffgen.measures.quality import Classifier, ClassifierConfig, _FeatureNet, kid


def _images(n: int, shape, seed: int) -> torch.Tensor:
    return torch.rand(n, int(np.prod(shape)), generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """A weights file of torch-fidelity's Inception at a seeded random initialisation (He-normal convolutions, so the
    activations keep their scale through the depth), and its sha256."""
    cls = fid._inception_class()

    class Unloaded(cls):
        def load_state_dict(self, *args, **kwargs):
            return None  # keep the random initialisation (the constructor always loads a state dict)

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = Unloaded("inception-v3-compat", ["2048"], feature_extractor_weights_path=empty)
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(net.state_dict(), path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _load(random_weights, shape, **kwargs) -> fid.InceptionFeatures:
    path, digest = random_weights
    return fid.load_inception(path, shape, device="cpu", sha256=digest, **kwargs)


# ------------------------------------------------------------------------------------------- input and plumbing

def test_inception_input_is_8_bit_rgb_of_the_pixel_scale():
    x = torch.tensor([[-1.5, -1.0, -0.5, 0.0, 0.5, 1.0]], dtype=torch.float64)
    img = fid.inception_input(x, (1, 2, 3))
    assert img.dtype == torch.uint8 and img.shape == (1, 3, 2, 3)
    expected = torch.tensor([0, 0, 64, 128, 191, 255], dtype=torch.uint8).reshape(2, 3)  # floor(x * 127.5 + 128)
    assert all(torch.equal(img[0, c], expected) for c in range(3))
    rgb = _images(4, (3, 5, 5), seed=1)
    assert torch.equal(fid.inception_input(rgb.float(), (3, 5, 5)), fid.inception_input(rgb, (3, 5, 5)))
    assert torch.equal(fid.inception_input(rgb, (3, 5, 5))[1, 2, 4, 0],
                       ((rgb[1, 2 * 25 + 4 * 5] * 127.5 + 128).floor()).to(torch.uint8))  # channel-major rows


def test_the_package_resizes_like_tensorflow_1():
    """The resize inside the port is TF1's bilinear (src = dst * in / out, no half-pixel offset): a numpy reference."""
    fid._inception_class()  # registers the package without its __init__ (which imports torchvision)
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    x = torch.rand(1, 1, 7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out = interpolate_bilinear_2d_like_tensorflow1x(x, size=(11, 13), align_corners=False)[0, 0].numpy()

    def taps(n_in, n_out):
        src = np.arange(n_out) * n_in / n_out
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    (r0, r1, wr), (c0, c1, wc), a = taps(7, 11), taps(5, 13), x[0, 0].numpy()
    rows = a[r0] * (1 - wr)[:, None] + a[r1] * wr[:, None]
    assert np.allclose(out, rows[:, c0] * (1 - wc) + rows[:, c1] * wc, atol=1e-6)


def test_features_of_a_batch_are_those_of_its_parts_in_any_input_dtype(random_weights):
    x = _images(2, (3, 32, 32), seed=3)
    seen = []
    one_by_one = _load(random_weights, (3, 32, 32), batch_size=1)
    hook = one_by_one.net.Conv2d_1a_3x3.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    parts = one_by_one.features(x.float())
    hook.remove()
    whole = _load(random_weights, (3, 32, 32), batch_size=2).features(x)
    assert parts.shape == (2, fid.INCEPTION_DIM) and parts.dtype == whole.dtype == torch.float64
    assert [tuple(s.shape) for s in seen] == [(1, 3, 299, 299)] * 2  # batched, resized to 299 x 299
    assert all(s.dtype == torch.float32 for s in seen)
    assert torch.allclose(parts, whole, rtol=1e-5, atol=1e-7)
    assert parts.std(0).max() > 0  # the images are told apart


def test_grey_images_give_the_features_of_their_three_channel_copy(random_weights):
    grey = _images(1, (1, 12, 12), seed=4)
    rgb = grey.repeat(1, 3)  # the grey plane as each of the three channel planes
    assert torch.allclose(_load(random_weights, (1, 12, 12)).features(grey),
                          _load(random_weights, (3, 12, 12)).features(rgb), rtol=1e-6, atol=1e-8)


def test_a_constant_image_has_the_same_features_at_every_size(random_weights):
    """Bilinear resizing keeps a constant image constant, and every size reaches the network at 299 x 299."""
    small = torch.full((1, 3 * 8 * 8), 0.3)
    large = torch.full((1, 3 * 299 * 299), 0.3)
    assert torch.allclose(_load(random_weights, (3, 8, 8)).features(small),
                          _load(random_weights, (3, 299, 299)).features(large), rtol=1e-5, atol=1e-7)


def test_device_auto_and_ieee_float32(random_weights):
    """device='auto' resolves as everywhere in diffgen; convolutions run without TF32 and the flag is restored."""
    ext = fid.load_inception(random_weights[0], (3, 4, 4), sha256=random_weights[1], device="auto")
    assert next(ext.net.parameters()).device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    flags = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, img):
            flags.append(torch.backends.cudnn.allow_tf32)
            return (img.float().mean((2, 3)),)

    before = torch.backends.cudnn.allow_tf32
    fid.InceptionFeatures(Probe(), (3, 4, 4)).features(_images(2, (3, 4, 4), seed=5))
    assert flags == [False] and torch.backends.cudnn.allow_tf32 == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_features_equal_cpu_features(random_weights):
    x = _images(2, (3, 32, 32), seed=6)
    gpu = fid.load_inception(random_weights[0], (3, 32, 32), sha256=random_weights[1], device="cuda").features(x)
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), _load(random_weights, (3, 32, 32)).features(x), rtol=1e-4, atol=1e-6)


def test_bad_shapes_and_images_raise_one_clear_error(random_weights):
    with pytest.raises(ValueError, match=r"shape must be \(C, H, W\) with C 1 \(grey\) or 3"):
        _load(random_weights, (2, 8, 8))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        _load(random_weights, (3, 8, 8), batch_size=0)
    with pytest.raises(ValueError, match=r"x must be images \[B >= 1, 192\]"):
        _load(random_weights, (3, 8, 8)).features(torch.zeros(2, 64))


# ------------------------------------------------------------------------------------------- the weights file

def test_a_wrong_or_missing_weights_file_is_refused_with_a_clear_error(tmp_path):
    wrong = tmp_path / fid.INCEPTION_FILE
    wrong.write_bytes(b"<html>not the weights</html>")
    for where in (wrong, tmp_path):  # the file, or the folder holding it
        with pytest.raises(ValueError) as err:
            fid.load_inception(where, (3, 32, 32), device="cpu")
        message = str(err.value)
        assert str(wrong) in message and hashlib.sha256(wrong.read_bytes()).hexdigest() in message
        assert fid.INCEPTION_SHA256 in message and "diffgen data get inception" in message
    with pytest.raises(ValueError, match=rf"the FID weights file {tmp_path / 'none.pth'} does not exist; get it with "
                                         r"`diffgen data get inception`"):
        fid.load_inception(tmp_path / "none.pth", (3, 32, 32))


def test_the_checked_file_is_the_network_loaded(random_weights):
    """The file's state dict reaches the network unchanged (through the package's own loader)."""
    state = torch.load(random_weights[0], weights_only=True)
    net = _load(random_weights, (3, 8, 8)).net
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert net.fc.out_features == 1008 and not net.training


def test_cli_checks_the_weights_before_any_chapter_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(fid.WEIGHTS_ENV, "")
    bad = tmp_path / "w.pth"
    bad.write_bytes(b"x")
    out = tmp_path / "out"
    assert cli.main(["run", "ch1", "--fid-weights", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"diffgen run: error: the FID weights file {bad} has sha256") and err.count("\n") == 1
    assert "diffgen data get inception" in err and not out.exists()
    monkeypatch.setenv(fid.WEIGHTS_ENV, str(tmp_path / "missing.pth"))
    assert cli.main(["run", "ch1", "--out", str(out)]) == 2
    assert "missing.pth does not exist" in capsys.readouterr().err and not out.exists()


def test_cli_passes_a_checked_file_to_the_chapters(tmp_path, monkeypatch):
    monkeypatch.setenv(fid.WEIGHTS_ENV, "")
    weights = tmp_path / fid.INCEPTION_FILE
    weights.write_bytes(b"weights")
    monkeypatch.setattr(fid, "INCEPTION_SHA256", hashlib.sha256(b"weights").hexdigest())
    cli._use_fid_weights(tmp_path)  # a folder holding the file
    assert fid.weights_path() == weights.resolve()


# ------------------------------------------------------------------------------------------- which features

def test_without_weights_the_classifier_is_used_and_the_metric_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv(fid.WEIGHTS_ENV, raising=False)
    cfg = ClassifierConfig()
    untrained = Classifier(_FeatureNet(cfg, (1, 8, 8)), cfg, accuracy=0.1, from_cache=False)  # training takes minutes
    calls = []
    monkeypatch.setattr(fid, "feature_classifier", lambda *args, **kwargs: calls.append((args, kwargs)) or untrained)
    feats = fid.quality_features("digits", (1, 8, 8), device="cpu", cache_dir=tmp_path, data_dir="d")
    assert calls == [(("digits",), {"device": "cpu", "cache_dir": tmp_path, "data_dir": "d"})]
    assert not feats.inception and feats.extractor is untrained
    assert feats.fid_name == ("Fréchet distance in the features of a digits classifier (not FID: no Inception "
                              "weights given)")
    assert feats.kid_name == "KID in the features of a digits classifier"
    x = _images(30, (1, 8, 8), seed=7)
    q = feats.measure(x[:12], feats.reference(x[12:]), n_boot=20)
    assert torch.equal(feats.reference(x[12:]).features, untrained.features(x[12:]))
    assert q.metric.startswith(feats.fid_name + ", N = 12 samples vs 18 reference images")
    assert "CIFAR-10 classifier" in fid.quality_features("cifar10", (3, 32, 32)).fid_name


def test_with_weights_inception_is_used_and_a_wrong_file_is_an_error(random_weights, tmp_path, monkeypatch):
    path, digest = random_weights
    monkeypatch.setattr(fid, "INCEPTION_SHA256", digest)
    monkeypatch.setenv(fid.WEIGHTS_ENV, str(path))
    feats = fid.quality_features("cifar10", (3, 32, 32), device="cpu", cache_dir=tmp_path)
    assert feats.inception and isinstance(feats.extractor, fid.InceptionFeatures)
    assert (feats.fid_name, feats.kid_name) == ("FID (Inception-v3 pool3)", "KID (Inception-v3 pool3)")
    monkeypatch.setenv(fid.WEIGHTS_ENV, str(tmp_path / "gone.pth"))
    with pytest.raises(ValueError, match="gone.pth does not exist"):  # no silent fallback to the classifier
        fid.quality_features("digits", (1, 8, 8), device="cpu", cache_dir=tmp_path)


# ------------------------------------------------------------------------------------------- FID and KID

class _Identity:
    """Features = the coordinates themselves (float64)."""

    @staticmethod
    def features(x):
        return x.to(torch.float64)


IDENTITY = fid.QualityFeatures(_Identity(), "FID (test)", "KID (test)", inception=False)


def _exact_gaussian_sample(n: int, mu, var, seed: int) -> torch.Tensor:
    """n rows whose sample mean is exactly mu and whose unbiased sample covariance is exactly diag(var)."""
    z = torch.randn(n, len(mu), dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    z = z - z.mean(0)
    q, _ = torch.linalg.qr(z)  # orthonormal columns, each with mean 0 (they span the centred z)
    return q * (n - 1) ** 0.5 * torch.as_tensor(var, dtype=torch.float64).sqrt() + torch.as_tensor(mu)


def test_fid_of_two_gaussians_is_the_closed_form():
    """Diagonal covariances: FID = |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2, with N - 1 in the covariances."""
    mu1, s1 = [0.0, 1.0, -2.0, 0.5], [1.0, 4.0, 0.25, 2.0]
    mu2, s2 = [1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 9.0]
    closed = sum((a - b) ** 2 for a, b in zip(mu1, mu2)) + sum((a ** 0.5 - b ** 0.5) ** 2 for a, b in zip(s1, s2))
    reference = IDENTITY.reference(_exact_gaussian_sample(300, mu2, s2, seed=1))
    samples = [_exact_gaussian_sample(40, mu1, s1, seed=s) for s in (2, 3)]
    q = IDENTITY.measure(samples, reference, n_boot=50)
    assert q.fid.value == pytest.approx(closed, rel=1e-9)
    assert q.fid_per_seed == pytest.approx([closed, closed], rel=1e-9)
    assert q.fid_across_seeds.low == pytest.approx(closed, rel=1e-9)  # the seeds agree exactly
    assert q.fid.low <= closed <= q.fid.high and q.fid.high > q.fid.low  # the bootstrap sees the finite sample
    assert (q.n, q.n_reference, q.seeds) == (40, 300, 2)


def test_kid_beside_fid_below_the_threshold_and_the_metric_text(monkeypatch):
    gen = torch.Generator().manual_seed(8)
    ref = torch.randn(50, 3, dtype=torch.float64, generator=gen)
    seeds = [torch.randn(20, 3, dtype=torch.float64, generator=gen) + 0.5 for _ in range(3)]
    q = IDENTITY.measure(seeds, IDENTITY.reference(ref), n_boot=50, seed=1)
    assert q.kid_per_seed == pytest.approx([kid(s, ref, standardize=True) for s in seeds], rel=1e-12)  # a classifier
    raw = fid.QualityFeatures(_Identity(), "FID (test)", "KID (test)", inception=True)  # Inception: as published
    assert raw.measure(seeds, raw.reference(ref), n_boot=5).kid_per_seed == pytest.approx(
        [kid(s, ref) for s in seeds], rel=1e-12)
    assert q.kid.value == pytest.approx(np.mean(q.kid_per_seed), rel=1e-12)
    assert q.kid_across_seeds.value == pytest.approx(q.kid.value, rel=1e-12)
    assert q.metric == ("FID (test), N = 20 samples per seed vs 50 reference images; KID (test) beside it "
                        "(unbiased; FID is biased upward at N < 10000)")
    assert q == IDENTITY.measure(seeds, IDENTITY.reference(ref), n_boot=50, seed=1)  # same seed, same numbers
    monkeypatch.setattr(fid, "KID_BELOW", 20)
    q = IDENTITY.measure(seeds[0], IDENTITY.reference(ref), n_boot=10)
    assert q.kid is None and q.kid_per_seed == () and "KID" not in q.metric and q.fid_across_seeds is None


def test_the_interval_spans_seeds_that_disagree():
    """One seed's samples are shifted: the hierarchical interval covers both seeds' FIDs, not only the mean."""
    ref = _exact_gaussian_sample(200, [0.0, 0.0], [1.0, 1.0], seed=9)
    near = _exact_gaussian_sample(30, [0.0, 0.0], [1.0, 1.0], seed=10)
    q = IDENTITY.measure([near, near + torch.tensor([2.0, 0.0], dtype=torch.float64)], IDENTITY.reference(ref),
                         n_boot=100)
    assert q.fid_per_seed == pytest.approx([0.0, 4.0], abs=1e-9)
    assert q.fid.value == pytest.approx(2.0, abs=1e-9)
    assert q.fid.low < 0.5 and q.fid.high > 3.5


def test_measure_rejects_unequal_seed_sizes():
    ref = IDENTITY.reference(_images(10, (2,), seed=11))
    with pytest.raises(ValueError, match="one such tensor per seed with the same N"):
        IDENTITY.measure([_images(5, (2,), seed=12), _images(6, (2,), seed=13)], ref)
    with pytest.raises(ValueError, match="n_boot must be a positive integer"):
        IDENTITY.measure(_images(5, (2,), seed=12), ref, n_boot=0)
