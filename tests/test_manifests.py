"""Our modules, built from each manifest's constructor keywords, have exactly the released layout."""

import pytest
import torch

from cascade_studio.pipeline.checkpoints import NETWORKS, RELEASED, identify_layout
from tests.support.manifests import RELEASED_CHECKPOINTS, load_manifest, manifest_shapes


def test_every_released_checkpoint_is_covered():
    released = {k: v for k, v in load_manifest("index").items() if v["released_files"]}
    assert set(released) == set(RELEASED_CHECKPOINTS)


@pytest.mark.parametrize("name", sorted(RELEASED_CHECKPOINTS))
def test_meta_module_has_manifest_keys_and_shapes(name):
    manifest = load_manifest(name)
    network, _ = RELEASED_CHECKPOINTS[name]
    cls = NETWORKS[network].build_class()
    with torch.device("meta"):
        module = cls(**manifest["constructor_kwargs"])
    ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert ours == manifest_shapes(name)
    params = sum(p.numel() for p in module.parameters())
    assert params == manifest["num_parameters"]


@pytest.mark.parametrize("name", sorted(RELEASED_CHECKPOINTS))
def test_released_layout_is_recognised(name):
    network, variant = RELEASED_CHECKPOINTS[name]
    identity = identify_layout(manifest_shapes(name), source=name)
    assert (identity.network, identity.variant, identity.released) == (network, variant, True)
    # The keywords we store for the variant are the reference ones (up to defaults).
    assert identity.kwargs == RELEASED[(network, variant)]
    reference = load_manifest(name)["constructor_kwargs"]
    assert {k: v for k, v in identity.kwargs.items() if k in reference} == reference
