"""Property-based checks (hypothesis) of the pure functions the rest rests on, each against an
independent float64 computation or a law it must keep for every input, not a few examples."""

from __future__ import annotations

import math
import shlex

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FAST = settings(max_examples=40, deadline=None, derandomize=True)


def _lrn_loop(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> torch.Tensor:
    """The paper's LRN in float64, one channel at a time: the window is [i - size//2, i + (size-1)//2]
    (torch's convention for an even size), within the channel's group."""
    x = x.double()
    out = torch.empty_like(x)
    per = x.shape[1] // groups
    for i in range(x.shape[1]):
        g0 = (i // per) * per
        lo, hi = max(g0, i - size // 2), min(g0 + per - 1, i + (size - 1) // 2)
        out[:, i] = x[:, i] / (k + alpha * (x[:, lo : hi + 1] ** 2).sum(1)) ** beta
    return out


# beta without subnormals: hypothesis cannot draw a range that reaches them in a process that flushes them to
# zero, as torch 2.4's inductor leaves one after a CPU compile (its kernels are built with -ffast-math).
@FAST
@given(
    n=st.integers(1, 2), per=st.integers(1, 6), groups=st.integers(1, 2), hw=st.integers(1, 4),
    size=st.integers(1, 7), alpha=st.floats(1e-4, 1.0), beta=st.floats(0.0, 1.5, allow_subnormal=False), k=st.floats(0.5, 3.0),
    relu=st.booleans(), channels_last=st.booleans(), seed=st.integers(0, 2**16), kernel=st.booleans(),
)
def test_lrn_matches_a_float64_loop(n, per, groups, hw, size, alpha, beta, k, relu, channels_last, seed, kernel) -> None:
    """Forward and backward of LocalResponseNorm (C kernel where it builds, or plain ops; grouped,
    fused ReLU, channels-last) against autograd through the float64 loop."""
    from unittest import mock

    from alexnet.lrn import LocalResponseNorm

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, per * groups, hw, hw + 1, generator=g) * 2
    grad = torch.randn(x.shape, generator=g)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    with mock.patch("alexnet.lrn.kernel_available", return_value=False) if not kernel else mock.MagicMock():
        y = LocalResponseNorm(size, alpha, beta, k, groups=groups)(x, relu=relu)
        (dx,) = torch.autograd.grad(y, x, grad)
    x64 = x.detach().double().requires_grad_(True)
    y64 = _lrn_loop(torch.relu(x64) if relu else x64, size, alpha, beta, k, groups)
    (dx64,) = torch.autograd.grad(y64, x64, grad.double())
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx.double(), dx64, rtol=1e-4, atol=1e-4)


@FAST
@given(
    schedule=st.sampled_from(["onecycle", "cosine", "step", "constant", "plateau"]),
    steps_per_epoch=st.integers(1, 50), epochs=st.integers(1, 20), warm_tenths=st.integers(0, 30),
    step_size=st.integers(1, 10), gamma=st.floats(0.01, 1.0), data=st.data(),
)
def test_lr_schedule_against_float64_formulas(schedule, steps_per_epoch, epochs, warm_tenths, step_size, gamma, data) -> None:
    """Each step's multiplier: a linear warm-up to 1, then the schedule's own formula, in (0, 1]."""
    from alexnet.optim import step_lr_factor

    warmup = min(warm_tenths / 10, epochs - 1 if epochs > 1 else 0)
    total = epochs * steps_per_epoch
    warm = warmup * steps_per_epoch
    step = data.draw(st.integers(0, total - 1))
    got = step_lr_factor(schedule, step, steps_per_epoch, epochs, warmup, step_size, gamma)
    if step < warm:
        want = min(1.0, (step + 1) / warm)
    elif schedule == "onecycle":
        want = (total - step) / max(1.0, total - warm)
    elif schedule == "cosine":
        want = (1 + math.cos(math.pi * (step - warm) / max(1.0, total - warm))) / 2
    elif schedule == "step":
        want = gamma ** math.floor(step / (step_size * steps_per_epoch))
    else:
        want = 1.0
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert 0 <= got <= 1
    if schedule == "onecycle":
        assert got > 0  # no step of the run trains at a rate of 0


@FAST
@given(n=st.integers(1, 3000), seed=st.integers(0, 2**40), fraction=st.floats(0.01, 0.5))
def test_held_out_split_is_disjoint_covering_and_seeded(n, seed, fraction) -> None:
    from alexnet.data.loaders import held_out

    train, val = held_out(n, seed, fraction)
    assert sorted(train + val) == list(range(n))
    assert not set(train) & set(val)
    assert len(val) == max(1, round(n * fraction))
    assert (train, val) == held_out(n, seed, fraction)


@FAST
@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1))
def test_shell_arg_round_trips_through_a_shell_split(path) -> None:
    """The printed word is read back by a POSIX shell as one argument: the path, never an option."""
    from alexnet.runtime import shell_arg

    (word,) = shlex.split(shell_arg(path))
    assert word == (f"./{path}" if path.startswith("-") else path)


@FAST
@given(h=st.integers(1, 80), w=st.integers(1, 80), data=st.data())
def test_ten_crops_are_the_papers_five_patches_and_their_reflections(h, w, data) -> None:
    """The four corners and the centre (its offset rounded down), then each of them mirrored, as the
    paper and Caffe's oversample take them; torchvision's ten_crop gives the same views where both
    margins are even (it centres by round() and mirrors the image before cropping, one pixel apart
    for an odd margin)."""
    from alexnet.data.augment import crop_flip_gather, ten_crop_params

    size = data.draw(st.integers(1, min(h, w)))
    x = torch.arange(h * w, dtype=torch.int32).reshape(1, 1, h, w)
    top, left, flip = ten_crop_params(h, w, size)
    ours = crop_flip_gather(x.expand(10, 1, h, w), size, top, left, flip)
    corners = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size), ((h - size) // 2, (w - size) // 2)]
    five = [x[0, :, t : t + size, le : le + size] for t, le in corners]
    for i, want in enumerate(five + [v.flip(-1) for v in five]):
        assert torch.equal(ours[i], want), i
    if (h - size) % 2 == 0 and (w - size) % 2 == 0:
        tvf = pytest.importorskip("torchvision.transforms.functional")
        theirs = tvf.ten_crop(x[0], size)
        for i, j in enumerate([0, 1, 2, 3, 4, 6, 5, 8, 7, 9]):  # its mirrored corners: tr, tl, br, bl
            assert torch.equal(ours[i], theirs[j]), i


NAMES = ["a", "b", "c", ""]


class _Member:
    def __init__(self, classes: list[str]) -> None:
        self.classes = classes


@FAST
@given(st.lists(st.text(min_size=1, max_size=3), min_size=1, max_size=8, unique=True), st.randoms(use_true_random=False))
def test_class_orders_put_a_permuted_member_back(classes, rnd) -> None:
    from alexnet.evaluate import class_orders

    other = list(classes)
    rnd.shuffle(other)
    orders = class_orders([_Member(classes), _Member(other)])
    assert orders[0] is None
    reordered = other if orders[1] is None else [other[j] for j in orders[1]]
    assert reordered == classes


@FAST
@given(st.lists(st.sampled_from(NAMES), min_size=1, max_size=6), st.lists(st.sampled_from(NAMES), min_size=1, max_size=6))
def test_class_orders_refuse_other_classes_in_one_line(first, second) -> None:
    """Members whose class lists differ (as multisets) are refused with a CheckpointError."""
    from alexnet.errors import CheckpointError
    from alexnet.evaluate import class_orders

    if sorted(first) == sorted(second):
        return
    with pytest.raises(CheckpointError, match="model 2 predicts other classes than model 1"):
        class_orders([_Member(first), _Member(second)])


@FAST
@given(
    b=st.integers(1, 4), c=st.sampled_from([1, 3]), h=st.integers(1, 12), mean_image=st.booleans(),
    shifted=st.booleans(), mirrored=st.booleans(), seed=st.integers(0, 2**16), data=st.data(),
)
def test_crop_normalize_paths_agree_with_float64(b, c, h, mean_image, shifted, mirrored, seed, data) -> None:
    """The C kernel, the per-image loop and the batched gather each give (crop - mean + shift) * inv_std
    of a float64 computation, at every offset, mirrored or not, with a mean image or per channel, for
    square images (as stored; a mean image is told from a per-channel mean by its width)."""
    from alexnet.data import augment

    w = h
    size = data.draw(st.integers(1, min(h, w)))
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, c, h, w), generator=g, dtype=torch.uint8)
    mean = torch.rand((c, h, w) if mean_image else (c, 1, 1), generator=g) * 255
    inv_std = 1 / (torch.rand(c, 1, 1, generator=g) * 60 + 10)
    shift = torch.randn(b, c, generator=g, dtype=torch.float64) * 5 if shifted else None
    top = torch.randint(0, h - size + 1, (b,), generator=g)
    left = torch.randint(0, w - size + 1, (b,), generator=g)
    flip = torch.rand(b, generator=g) < 0.5 if mirrored else None
    want = torch.empty(b, c, size, size, dtype=torch.float64)
    for i in range(b):
        t, le = int(top[i]), int(left[i])
        crop = x[i, :, t : t + size, le : le + size].double()
        m = mean.double()[:, t : t + size, le : le + size] if mean_image else mean.double()
        v = crop - m + (shift[i].reshape(c, 1, 1) if shifted else 0)
        v = v * inv_std.double()
        want[i] = v.flip(-1) if mirrored and flip[i] else v
    for batched in (True, False):
        got = augment.crop_normalize(x, size, top, left, flip, mean, inv_std, shift, batched=batched).clone()
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)


@FAST
@given(h=st.integers(1, 30), w=st.integers(1, 600), resize=st.integers(2, 40), data=st.data())
def test_resize_crop_gives_the_stored_square(h, w, resize, data) -> None:
    """Any image resized (shorter side -> ``resize``) and centre-cropped comes out crop x crop, and the
    strip shortcut (a side over 16 times the other) crops what the whole resize would. From 2 px:
    torch's uint8 antialiased resize of a larger image to 1x1 fails an internal assert (torch 2.x),
    which decode_bytes never asks of it (only images under 2 * resize take that path)."""
    from alexnet.data import folder

    crop = data.draw(st.integers(1, resize))
    rows, cols = torch.linspace(0, 6, h).reshape(h, 1), torch.linspace(0, 9, w).reshape(1, w)
    x = ((torch.sin(rows + cols) + 1) * 127.5).round().to(torch.uint8).expand(3, h, w).contiguous()  # a smooth photo
    got = folder._resize_crop(x, resize, crop)
    assert got.shape == (3, crop, crop)
    scale = resize / min(h, w)
    nh, nw = max(resize, round(h * scale)), max(resize, round(w * scale))
    full = folder._resize_uint8(x, nh, nw).int()
    t, le = (nh - crop) // 2, (nw - crop) // 2
    # Within a pixel of the whole resize's crop: no further from it than its neighbours are.
    padded = torch.nn.functional.pad(full[None].float(), (1, 1, 1, 1), mode="replicate")[0].int()
    near = [padded[:, t + 1 + dt : t + 1 + dt + crop, le + 1 + dl : le + 1 + dl + crop] for dt in (-1, 0, 1) for dl in (-1, 0, 1)]
    lo, hi = torch.stack(near).min(0).values, torch.stack(near).max(0).values
    assert bool(((got.int() >= lo - 1) & (got.int() <= hi + 1)).all())


class _Net:
    def __init__(self, classes: list[str], outputs: int) -> None:
        self.classes, self.fc8 = classes, torch.nn.Linear(1, outputs)


@FAST
@given(
    st.lists(st.sampled_from(NAMES[:3] + ["d", "e"]), min_size=1, max_size=6),
    st.lists(st.sampled_from(NAMES[:3] + ["d", "e"]), min_size=1, max_size=6),
    st.integers(0, 2),
)
def test_label_map_points_each_class_at_its_output(data_classes, ours, extra) -> None:
    """Either each of the data's classes goes to the output of that name, or the classes are the
    outputs by number (as many), or a CheckpointError says why not: never another exception."""
    import warnings

    from alexnet.errors import CheckpointError
    from alexnet.evaluate import label_map

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = label_map(data_classes, _Net(ours, len(ours) + extra if extra < 2 else len(ours)))
    except CheckpointError as e:
        assert "classes but the model predicts" in str(e)
        return
    if got is None:
        assert ours == data_classes or len(data_classes) == (len(ours) + extra if extra < 2 else len(ours))
    else:
        assert [ours[j] for j in got] == data_classes
