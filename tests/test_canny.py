"""Canny edges as the reference computes them (``CannyFilter(resize=224)`` in ``modules/controlnet.py``, fed with
the notebooks' ``resize_image``), and the pipeline's canny input being exactly those edges."""

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image, ImageDraw, ImageFilter

from cascade_studio.core.geometry import effnet_input_size
from cascade_studio.core.request import GenerationRequest, StageSettings
from cascade_studio.pipeline.control import canny_edges
from cascade_studio.pipeline.generate import Pipeline
from cascade_studio.pipeline.images import load_image
from cascade_studio.pipeline.models import ModelSet


def fixture_image(path, width=300, height=200):
    """A picture with hard and soft edges, colour and a gradient (deterministic), written as a PNG."""
    xs = np.linspace(0, 255, width, dtype=np.float32)
    ys = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    base = np.stack([np.broadcast_to(xs, (height, width)), np.broadcast_to(ys, (height, width)),
                     np.full((height, width), 90, np.float32)], axis=-1)  # fmt: skip
    image = Image.fromarray(base.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    draw.rectangle((40, 30, 140, 120), fill=(250, 240, 20))
    draw.ellipse((150, 60, 270, 180), fill=(10, 30, 200), outline=(255, 255, 255), width=4)
    draw.line((0, 190, 299, 100), fill=(0, 0, 0), width=3)
    draw.polygon([(200, 10), (290, 20), (240, 50)], fill=(200, 0, 0))
    # soft and low-contrast structure, so that the thresholds matter: a blurred blob, faint stripes, mild noise
    blob = Image.new("L", (width, height), 0)
    ImageDraw.Draw(blob).ellipse((20, 120, 120, 190), fill=255)
    blob = blob.filter(ImageFilter.GaussianBlur(2))
    pixels = np.asarray(image).astype(np.int16)
    pixels += (np.asarray(blob)[:, :, None] * np.array([0.25, -0.2, 0.15])).astype(np.int16)
    pixels[:, 150:300:12] += 28
    # a row of softened steps of every height from faint to strong: some edge straddles any threshold
    steps = np.zeros((44, width), np.float32)
    for k in range(width // 6):
        steps[8:36, 6 * k : 6 * k + 3] = 10 + 2 * k
    steps = np.asarray(Image.fromarray(steps.astype(np.uint8), "L").filter(ImageFilter.GaussianBlur(0.8)))
    pixels[150:194] = 60 + steps[:, :, None].astype(np.int16)
    pixels += np.random.default_rng(7).integers(-10, 11, pixels.shape, dtype=np.int16)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(path)
    return path


def reference_canny(images: torch.Tensor) -> torch.Tensor:
    """The reference CannyFilter, line by line: bilinear to 224², ×255 truncated to uint8 in RGB order,
    cv2.Canny(·, 100, 200) on the 3-channel image, /255, bilinear back to the input size."""
    orig_size = images.shape[-2:]
    x = torch.nn.functional.interpolate(images, size=(224, 224), mode="bilinear")
    edges = [cv2.Canny(x[i].mul(255).permute(1, 2, 0).cpu().numpy().astype(np.uint8), 100, 200)
             for i in range(len(x))]  # fmt: skip
    edges = torch.stack([torch.tensor(e).div(255).unsqueeze(0) for e in edges], dim=0)
    return torch.nn.functional.interpolate(edges, size=orig_size, mode="bilinear")


def test_canny_equals_the_reference_procedure_on_a_fixture_image(tmp_path):
    image = load_image(fixture_image(tmp_path / "fixture.png"))
    # The notebooks hand the filter the image after resize_image: torchvision resize, bilinear, antialiased.
    batch = TF.resize(image, [192, 288], antialias=True).unsqueeze(0)
    ours = canny_edges(batch)
    expected = reference_canny(batch)
    assert ours.shape == (1, 1, 192, 288) and ours.dtype == torch.float32
    assert torch.equal(ours, expected)
    # Not vacuous: the fixture has plenty of edges, and the map is soft (the 224 px detour), as trained.
    edges_224 = cv2.Canny(F.interpolate(batch, size=(224, 224), mode="bilinear")[0].mul(255).permute(1, 2, 0)
                          .numpy().astype(np.uint8), 100, 200)  # fmt: skip
    assert (edges_224 > 0).mean() > 0.02
    # and the fixture tells the reference thresholds apart from near ones
    small = F.interpolate(batch, size=(224, 224), mode="bilinear")[0].mul(255).permute(1, 2, 0).numpy().astype(np.uint8)
    for low, high in ((90, 200), (110, 200), (100, 190), (100, 210)):
        assert not np.array_equal(cv2.Canny(small, low, high), edges_224), (low, high)
    assert 0 < ours.max() <= 1 and ((ours > 0) & (ours < 1)).any()


def test_canny_of_a_batch_is_per_image():
    g = torch.Generator().manual_seed(0)
    batch = torch.rand(3, 3, 64, 96, generator=g)
    together = canny_edges(batch)
    for i in range(3):
        assert torch.equal(together[i : i + 1], reference_canny(batch[i : i + 1]))


@pytest.fixture(scope="module")
def pipeline(demo_models):
    return Pipeline(ModelSet(demo_models))


def test_the_pipeline_feeds_the_canny_controlnet_the_reference_edges(pipeline, tmp_path):
    path = fixture_image(tmp_path / "fixture.png")
    request = GenerationRequest("a house", seed=1, mode="canny", control_image=str(path), width=256, height=256,
                                stage_c=StageSettings(2, 4.0, 2.0), stage_b=StageSettings(1, 1.1, 1.0))  # fmt: skip
    seen = []
    controlnet = pipeline.models.get("controlnet_canny")
    handle = controlnet.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        pipeline.run(request, control_image=load_image(path))
    finally:
        handle.remove()
    (given,) = seen
    # the control image is brought to the effnet input size of the output (192² for 256²), as resize_image does
    w, h = effnet_input_size(256, 256)
    expected = reference_canny(TF.resize(load_image(path), [h, w], antialias=True).unsqueeze(0))
    assert torch.equal(given, expected)
