"""Text encoders that turn captions into the token-level embeddings Stable Diffusion consumes (77 x d):
the backbone's own text encoder (SD's CLIPTextModel; the surrogate's MiniLM), or an open_clip text tower."""

from __future__ import annotations

import torch

from mvc.components import text_components
from mvc.config import StudyConfig


class TextEncoder:
    """Token-level last hidden state (L x d) of the backbone's text encoder, as Stable Diffusion consumes it."""

    def __init__(self, tokenizer, model: torch.nn.Module, max_length: int = 77, device: str = "cpu",
                 name: str = "clip"):
        self.tokenizer, self.model = tokenizer, model.to(device).eval()
        self.max_length, self.device = max_length, device
        self.name = name

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(texts, padding="max_length", max_length=self.max_length, truncation=True,
                               return_tensors="pt")
        # the mask exactly where diffusers' pipelines pass one (a bidirectional encoder such as MiniLM), so that the
        # cached embeddings equal what `encode_prompt` would give
        mask = batch.attention_mask.to(self.device) if getattr(self.model.config, "use_attention_mask", False) else None
        return self.model(batch.input_ids.to(self.device), attention_mask=mask)[0].float().cpu()


class OpenClipTextEncoder:
    """open_clip's text tower, token level: token embedding, positional embedding, transformer, final norm."""

    def __init__(self, model_name: str, pretrained: str | None, device: str = "cpu"):
        import open_clip

        self.model = open_clip.create_model(model_name, pretrained=pretrained, device=device).eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.device, self.name = device, f"open_clip:{model_name}:{pretrained}"

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        m = self.model
        ids = self.tokenizer(texts).to(self.device)
        x = m.token_embedding(ids) + m.positional_embedding[: ids.shape[1]]
        x = m.transformer(x, attn_mask=m.attn_mask)
        return m.ln_final(x).float().cpu()


def build_text_encoder(cfg: StudyConfig, device: str = "cpu"):
    """The encoder named by `text.encoder`: the backbone's CLIPTextModel, or an open_clip model."""
    if cfg.text.encoder == "open_clip":
        return OpenClipTextEncoder(cfg.text.open_clip_model, cfg.text.open_clip_pretrained, device)
    tokenizer, model, source = text_components(cfg)
    return TextEncoder(tokenizer, model, cfg.text.max_length, device, name=f"backbone:{source}")
