"""Augmentation and collates (training/data/augment.py): image/label alignment by construction, determinism,
padding, jitter formulas, negative resizing and normalisation."""
import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion

from densehybrid_training.data.augment import (
    IMAGENET_MEAN, IMAGENET_MEAN_UINT8, IMAGENET_STD, AugmentedDataset, InlierAugment, InlierCollate,
    NegativeCollate, NegativeResize, PhotometricJitter, scale_crop,
)
from densehybrid_training.data.common import sample_rng


def square_sample(h=60, w=80, box=(20, 30, 40, 55)):
    """Labels 1 in a box (rows r0..r1-1, cols c0..c1-1), 0 elsewhere; the image is red in the box, blue outside."""
    r0, c0, r1, c1 = box
    labels = np.zeros((h, w), np.uint8)
    labels[r0:r1, c0:c1] = 1
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 2] = 255
    image[r0:r1, c0:c1] = (255, 0, 0)
    return image, labels


def test_square_stays_aligned_after_scale_crop_flip():
    box = (20, 30, 40, 55)
    image, labels = square_sample(box=box)
    aug = InlierAugment(crop=(48, 64), scale_range=(0.5, 2.0), flip_prob=0.5, jitter=None)
    flips = set()
    for seed in range(30):
        rng = sample_rng(seed, 0)
        params = aug.params(labels.shape, sample_rng(seed, 0))
        img, lab = aug(image, labels, rng)
        assert img.shape == (48, 64, 3) and lab.shape == (48, 64) and img.dtype == np.uint8
        s, (top, left), flip = params["scale"], params["offset"], params["flip"]
        flips.add(flip)
        # expected square in the output, from the geometry alone: scaled box minus the crop offset, mirrored
        sh, sw = round(60 * s), round(80 * s)
        r0, c0, r1, c1 = (box[0] * sh / 60 - top, box[1] * sw / 80 - left, box[2] * sh / 60 - top, box[3] * sw / 80 - left)
        if flip:
            c0, c1 = 64 - c1, 64 - c0
        rows, cols = np.nonzero(lab == 1)
        inside_r = (max(r0, 0), min(r1, 48))
        inside_c = (max(c0, 0), min(c1, 64))
        if inside_r[0] >= inside_r[1] - 1 or inside_c[0] >= inside_c[1] - 1:
            assert rows.size <= max(1, int(2 * s * 80))  # square (almost) outside the crop
            continue
        assert abs(rows.min() - inside_r[0]) <= 1 and abs(rows.max() + 1 - inside_r[1]) <= 1
        assert abs(cols.min() - inside_c[0]) <= 1 and abs(cols.max() + 1 - inside_c[1]) <= 1
        # pixel alignment: label-1 pixels away from the box edge (3x3 erosion) are red, label-0 ones blue
        interior = binary_erosion(lab == 1, np.ones((3, 3)), border_value=0)
        assert interior.any() and (img[interior] == (255, 0, 0)).all()
        outside = binary_erosion(lab == 0, np.ones((3, 3)), border_value=0)
        assert (img[outside] == (0, 0, 255)).all()
    assert flips == {True, False}


def test_padding_when_crop_exceeds_scaled_image():
    image, labels = square_sample(h=10, w=12, box=(2, 3, 6, 9))
    img, lab = scale_crop(image, labels, 1.0, (16, 20), (0, 0))
    np.testing.assert_array_equal(lab[:10, :12], labels)
    assert (lab[10:] == 255).all() and (lab[:, 12:] == 255).all()
    assert (img[10:] == IMAGENET_MEAN_UINT8).all() and (img[:, 12:] == IMAGENET_MEAN_UINT8).all()
    np.testing.assert_array_equal(img[:10, :12], image)
    # scale 1, an offset crop is plain slicing
    img, lab = scale_crop(image, labels, 1.0, (4, 5), (2, 3))
    np.testing.assert_array_equal(lab, labels[2:6, 3:8])
    np.testing.assert_array_equal(img, image[2:6, 3:8])
    # scale 2 with nearest labels: every label pixel becomes a 2x2 block
    _, lab = scale_crop(image, labels, 2.0, (20, 24), (0, 0))
    np.testing.assert_array_equal(lab, np.kron(labels, np.ones((2, 2), np.uint8)))
    # a crop larger than the image with a negative offset places the image inside the crop
    img, lab = scale_crop(image, labels, 1.0, (16, 20), (-3, -5))
    np.testing.assert_array_equal(lab[3:13, 5:17], labels)
    np.testing.assert_array_equal(img[3:13, 5:17], image)
    assert (lab[:3] == 255).all() and (lab[13:] == 255).all() and (lab[:, :5] == 255).all() and (lab[:, 17:] == 255).all()
    assert (img[:3] == IMAGENET_MEAN_UINT8).all() and (img[:, 17:] == IMAGENET_MEAN_UINT8).all()
    with pytest.raises(ValueError, match="offset"):
        scale_crop(image, labels, 1.0, (4, 5), (7, 0))
    with pytest.raises(ValueError, match="offset"):
        scale_crop(image, labels, 1.0, (16, 20), (-7, 0))  # 10 rows placed 7 down do not fit 16


def test_small_images_are_placed_randomly_and_padding_is_not_jittered():
    image = np.full((10, 12, 3), 90, np.uint8)
    labels = np.ones((10, 12), np.uint8)
    aug = InlierAugment(crop=(32, 32), scale_range=(1.0, 1.0), flip_prob=0.0,
                        jitter=PhotometricJitter(0.5, 0.5, 0.5, 0.1))
    corners = set()
    for seed in range(20):
        img, lab = aug(image, labels, sample_rng(seed))
        rows, cols = np.nonzero(lab == 1)
        assert rows.max() - rows.min() == 9 and cols.max() - cols.min() == 11
        corners.add((int(rows.min()), int(cols.min())))
        assert (img[lab == 255] == IMAGENET_MEAN_UINT8).all()  # padding keeps the fill value
        assert not (img[lab == 1] == 90).all()                  # the image itself was jittered
    assert len(corners) > 5


def test_augment_is_deterministic_given_generator():
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    labels = np.random.default_rng(1).integers(0, 19, (40, 50), dtype=np.uint8)
    aug = InlierAugment(crop=(32, 32), jitter=True)
    a = aug(image, labels, np.random.default_rng(7))
    b = aug(image, labels, np.random.default_rng(7))
    c = aug(image, labels, np.random.default_rng(8))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    # labels only ever take input values or the pad/ignore value
    assert set(np.unique(a[1])) <= set(np.unique(labels)) | {255}


def test_photometric_jitter_formulas():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 200, (8, 9, 3), dtype=np.uint8)
    # brightness only: x * b, rounded and clipped
    out = PhotometricJitter.apply(image, 1.15, 1.0, 1.0, 0.0)
    expected = np.clip(np.rint(image * 1.15), 0, 255)
    assert np.abs(out - expected).max() <= 1  # float32 arithmetic may round a .5 the other way
    # contrast around the mean grey level keeps the mean grey level
    grey = lambda x: (x.astype(np.float64) @ [0.299, 0.587, 0.114]).mean()  # noqa: E731
    out = PhotometricJitter.apply(image, 1.0, 0.8, 1.0, 0.0)
    assert abs(grey(out) - grey(image)) < 0.6
    # saturation 0 -> grey image (all channels equal, within rounding)
    out = PhotometricJitter.apply(image, 1.0, 1.0, 1e-9, 0.0)
    assert np.abs(out.astype(int) - out[..., :1].astype(int)).max() <= 1
    # a third of a turn of hue turns pure red into (about) pure green
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    green = PhotometricJitter.apply(red, 1.0, 1.0, 1.0, 1 / 3)
    assert green[..., 1].min() >= 250 and green[..., 0].max() <= 8 and green[..., 2].max() <= 8
    with pytest.raises(ValueError, match="brightness"):
        PhotometricJitter(brightness=1.5)


def test_negative_resize_range_mask_and_flip():
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, :20] = 200  # left half bright
    mask = np.zeros((20, 40), bool)
    mask[5:15, 5:35] = True
    resize = NegativeResize(side_range=(10, 30), flip_prob=0.5)
    flipped = set()
    for seed in range(20):
        img, m = resize(image, mask, sample_rng(seed))
        assert 10 <= max(m.shape) <= 30 and img.shape[:2] == m.shape and m.dtype == bool
        assert abs(m.shape[1] / m.shape[0] - 2.0) < 0.35  # aspect ratio kept
        flipped.add(bool(img[m.shape[0] // 2, 0, 0] < 100))
    assert flipped == {True, False}
    # a one-pixel object does not vanish when shrunk
    tiny = np.zeros((100, 100), bool)
    tiny[50, 50] = True
    _, m = NegativeResize.resize(np.zeros((100, 100, 3), np.uint8), tiny, 10)
    assert m.shape == (10, 10) and m.sum() >= 1


def test_inlier_collate_normalises():
    img = np.zeros((2, 3, 3), np.uint8)
    img[0, 0] = 255
    lab = np.array([[0, 1, 255], [2, 3, 4]], np.uint8)
    x, y = InlierCollate()([(img, lab), (img, lab)])
    assert x.shape == (2, 3, 2, 3) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y[0, 0, 2] == 255
    for c in range(3):
        assert x[0, c, 0, 0].item() == pytest.approx((1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c], rel=1e-6)
        assert x[1, c, 1, 1].item() == pytest.approx(-IMAGENET_MEAN[c] / IMAGENET_STD[c], rel=1e-6)
    with pytest.raises(ValueError, match="share a size"):
        InlierCollate()([(img, lab), (img[:1], lab[:1])])


def test_negative_collate_pads():
    a = (np.full((2, 3, 3), 255, np.uint8), np.array([[1, 0, 1], [1, 1, 1]], bool))
    b = (np.zeros((4, 1, 3), np.uint8), np.ones((4, 1), bool))
    x, m = NegativeCollate(mean=(0, 0, 0), std=(1, 1, 1))([a, b])
    assert x.shape == (2, 3, 4, 3) and m.shape == (2, 4, 3)
    assert torch.equal(m[0, :2], torch.tensor([[True, False, True], [True, True, True]]))
    assert not m[0, 2:].any() and m[1, :, 0].all() and not m[1, :, 1:].any()
    assert torch.all(x[0, :, :2] == 1.0) and torch.all(x[0, :, 2:] == 0.0)


def test_augmented_dataset_is_a_function_of_seed_epoch_index():
    image, labels = square_sample()

    class Base:
        classes = ("a", "b")

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return image, labels

    ds = AugmentedDataset(Base(), InlierAugment(crop=(32, 32), jitter=True), seed=5)
    first = [ds[i] for i in range(3)]
    again = ds[1]
    np.testing.assert_array_equal(first[1][0], again[0])
    ds.set_epoch(1)
    assert not np.array_equal(ds[1][0], first[1][0])
    ds.set_epoch(0)
    np.testing.assert_array_equal(ds[2][1], first[2][1])
    assert ds.classes == ("a", "b") and len(ds) == 3


def test_flipped_one_pixel_wide_negative_becomes_a_tensor():
    """A thin negative resized to 1 px width and flipped: numpy calls the reversed view contiguous but keeps its
    negative stride, which torch.from_numpy rejects (it stopped a training run at step 3,698)."""
    image = np.arange(40 * 2 * 3, dtype=np.uint8).reshape(40, 2, 3)
    mask = np.ones((40, 2), bool)
    out_img, out_mask = NegativeResize(side_range=(20, 20), flip_prob=1.0)(image, mask, np.random.default_rng(0))
    assert out_img.shape == (20, 1, 3) and out_mask.shape == (20, 1)
    assert torch.from_numpy(out_img).shape == (20, 1, 3) and torch.from_numpy(out_mask).all()
