"""Tiny random models built from configs and saved as their libraries save them, so that the real loading code
(`from_pretrained` of a local folder) runs offline in tests and scripts."""

from __future__ import annotations

from pathlib import Path


def save_tiny_blip2(folder: Path) -> Path:
    """A random BLIP-2 (model and processor) with CLIP's vocabulary, saved with `save_pretrained`."""
    import torch
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
        CLIPTokenizer,
        OPTConfig,
    )

    from mvc.surrogate import clip_tokenizer

    folder = Path(folder)
    clip_tokenizer(77).save_pretrained(folder / "tok")
    tok = CLIPTokenizer.from_pretrained(folder / "tok")
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_token = tok.convert_tokens_to_ids("<image>")
    text = OPTConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                     word_embed_proj_dim=32, max_position_embeddings=128, bos_token_id=49406, eos_token_id=49407,
                     pad_token_id=49407)
    config = Blip2Config(vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                        "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
                         qformer_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
                                         "intermediate_size": 64, "encoder_hidden_size": 32, "vocab_size": 100},
                         text_config=text.to_dict(), num_query_tokens=4, image_token_index=image_token)
    torch.manual_seed(0)
    model = Blip2ForConditionalGeneration(config)
    processor = Blip2Processor(BlipImageProcessor(size={"height": 32, "width": 32}), tok, num_query_tokens=4)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_tiny_sd(folder: Path) -> Path:
    """A Stable-Diffusion-shaped pipeline folder (the five parts, tiny, random), as `save_pretrained` writes it."""
    from diffusers import StableDiffusionPipeline

    from mvc.config import SurrogateConfig
    from mvc.surrogate import (
        build_surrogate_text_encoder,
        build_surrogate_unet,
        build_surrogate_vae,
        clip_tokenizer,
        noise_scheduler,
    )

    s = SurrogateConfig(vae_channels=[8, 16], unet_channels=[8, 16], text_hidden_size=16, text_layers=1, text_heads=2)
    pipe = StableDiffusionPipeline(vae=build_surrogate_vae(s, 16), text_encoder=build_surrogate_text_encoder(s),
                                   tokenizer=clip_tokenizer(77), unet=build_surrogate_unet(s, 8),
                                   scheduler=noise_scheduler(s), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return Path(folder)


def save_random_inception(path: Path) -> dict:
    """A randomly initialised FID Inception (torch-fidelity's layout) saved to `path`; nothing is downloaded."""
    from unittest import mock

    import torch
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: None), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None):
        torch.manual_seed(0)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for conv in (m for m in net.modules() if isinstance(m, torch.nn.Conv2d)):  # keep activations from vanishing
        torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    state = net.state_dict()
    torch.save(state, path)
    return state


def save_random_torchvision_weights(name: str, torch_home: Path) -> Path:
    """A randomly initialised torchvision `name` (e.g. resnet50) saved where `torchvision.models.<name>(weights=
    'DEFAULT')` reads its ImageNet weights from the torch hub cache (`TORCH_HOME`), under the file name of the real
    release: the real loading code runs, offline, on shape-true random weights."""
    import torch
    import torchvision

    url = torchvision.models.get_model_weights(name).DEFAULT.url
    path = Path(torch_home) / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(getattr(torchvision.models, name)(weights=None).state_dict(), path)
    return path
