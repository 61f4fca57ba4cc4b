from __future__ import annotations

import pytest
import torch

from mvc import components
from mvc import surrogate as surrogate_parts
from tests.conftest import REPO


@pytest.fixture(scope="module")
def surrogate():
    from mvc.config import load_config

    return load_config(REPO / "params/smoke.yaml").backbone.surrogate


def test_widened_unet_equals_original_when_extra_channels_are_zero(surrogate):
    torch.manual_seed(0)
    unet = surrogate_parts.build_surrogate_unet(surrogate, 8).eval()
    z, t, e = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 7, surrogate.text_hidden_size)
    with torch.no_grad():
        before = unet(z, t, encoder_hidden_states=e).sample
        wide = components.widen_conv_in(unet)
        assert wide.config.in_channels == 8 and wide.conv_in.in_channels == 8
        after_zero = wide(torch.cat([z, torch.zeros_like(z)], 1), t, encoder_hidden_states=e).sample
        after_any = wide(torch.cat([z, torch.randn_like(z)], 1), t, encoder_hidden_states=e).sample
    torch.testing.assert_close(after_zero, before)
    torch.testing.assert_close(after_any, before)  # new weights start at zero: the model is the pretrained one


def test_surrogate_text_encoder_is_deterministic(surrogate):
    build = surrogate_parts.build_surrogate_text_encoder
    a, b = build(surrogate), build(surrogate)
    for (_, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q)


def test_backbone_folder_loads_in_stable_diffusion_pipeline(smoke_generated):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(smoke_generated.paths.backbone))
    out = pipe("a photo of a handwritten digit", num_inference_steps=2, height=16, width=16, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 16, 16, 3)
    assert pipe.scheduler.config.clip_sample is False  # the trap of docs/method.md (surrogate backbone)


def test_missing_or_broken_model_folder_is_named(tmp_path):
    with pytest.raises(components.ModelFolderError, match="does not exist"):
        components.load_backbone(tmp_path / "nothing")
    (tmp_path / "half" / "unet").mkdir(parents=True)
    with pytest.raises(components.ModelFolderError) as err:
        components.load_backbone(tmp_path / "half")
    assert "vae" in str(err.value) and "text_encoder" in str(err.value)


def test_uncached_hub_id_offline_says_how_to_fetch(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(components.ModelFolderError) as err:
        components.load_backbone("someone/not-a-cached-model")
    assert "huggingface-cli download someone/not-a-cached-model" in str(err.value)
