"""Each encoder's transform: the authors' PIL pipeline, reproduced on uint8 tensors."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as v1

from gpfm.backbone.zoo import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    get_encoder_spec,
    list_encoders,
)


def tissue_like_tile(height: int = 512, width: int = 480) -> np.ndarray:
    """Smooth colour variation plus grain: an (H, W, 3) uint8 stand-in for an H&E tile."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    channels = [128 + 60 * np.sin(x / 17.0 + c) + 40 * np.cos(y / 23.0 * (c + 1)) for c in range(3)]
    image = np.stack(channels, axis=-1) + rng.normal(0, 12, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def authors_pipeline(preprocessing: Preprocessing) -> v1.Compose:
    """What the model cards write: PIL resize, center crop, ToTensor, Normalize."""
    mode = {"bilinear": v1.InterpolationMode.BILINEAR, "bicubic": v1.InterpolationMode.BICUBIC}
    resize = preprocessing.resize
    steps = [
        v1.Resize(
            resize if isinstance(resize, int) else list(resize), mode[preprocessing.interpolation]
        )
    ]
    if preprocessing.crop is not None:
        steps.append(v1.CenterCrop(preprocessing.crop))
    return v1.Compose([*steps, v1.ToTensor(), v1.Normalize(preprocessing.mean, preprocessing.std)])


@pytest.mark.parametrize("name", [n for n in list_encoders() if not n.startswith("vit_")])
def test_the_transform_reproduces_the_authors_pil_pipeline_to_one_grey_level(name):
    preprocessing = get_encoder_spec(name).preprocessing
    tile = tissue_like_tile()
    ours = preprocessing.transform()(torch.from_numpy(tile).permute(2, 0, 1))
    theirs = authors_pipeline(preprocessing)(Image.fromarray(tile))
    assert ours.shape == theirs.shape == (3, preprocessing.input_size, preprocessing.input_size)
    one_grey_level = 1.01 / 255 / min(preprocessing.std)
    difference = (ours - theirs).abs()
    assert difference.max() <= one_grey_level and difference.mean() < 1e-3


def test_tensors_batches_arrays_and_pil_images_give_the_same_input():
    transform = get_encoder_spec("uni").preprocessing.transform()
    tile = tissue_like_tile(300, 260)
    as_tensor = transform(torch.from_numpy(tile).permute(2, 0, 1))
    as_batch = transform(torch.from_numpy(np.stack([tile, tile])).permute(0, 3, 1, 2))
    torch.testing.assert_close(as_batch[1], as_tensor)
    torch.testing.assert_close(transform(tile), as_tensor)
    assert transform(Image.fromarray(tile)).shape == (3, 224, 224)
    assert as_tensor.dtype == torch.float32


def test_normalisation_uses_the_entry_mean_and_std():
    preprocessing = get_encoder_spec("h-optimus-0").preprocessing
    grey = torch.full((3, 224, 224), 128, dtype=torch.uint8)
    out = preprocessing.transform()(grey)
    expected = (128 / 255 - torch.tensor(preprocessing.mean)) / torch.tensor(preprocessing.std)
    torch.testing.assert_close(out[:, 0, 0], expected.float())


def test_preprocessing_round_trips_through_json_values():
    preprocessing = Preprocessing(256, 224, IMAGENET_MEAN, IMAGENET_STD, "bicubic")
    assert Preprocessing.from_dict(preprocessing.to_dict()) == preprocessing
    square = Preprocessing((224, 224), None, IMAGENET_MEAN, IMAGENET_STD)
    assert Preprocessing.from_dict(square.to_dict()) == square and square.input_size == 224


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((224, None, IMAGENET_MEAN, IMAGENET_STD), "needs a crop"),
        (((224, 224), None, IMAGENET_MEAN, (0.2, 0.0, 0.2)), "std positive"),
        (((224, 224), None, IMAGENET_MEAN, IMAGENET_STD, "nearest"), "interpolation"),
    ],
)
def test_inconsistent_preprocessing_is_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        Preprocessing(*arguments)


def test_transform_takes_a_read_only_array_without_a_warning():
    import warnings

    import numpy as np

    from gpfm.backbone.zoo.preprocessing import square

    tile = np.full((32, 32, 3), 200, dtype=np.uint8)
    tile.setflags(write=False)  # as cached or memory-mapped tiles are
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = square(64).transform()(tile)
    assert out.shape == (3, 64, 64)
