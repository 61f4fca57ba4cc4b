"""The kit's own vocabulary, one `register_*` call per thing: its datasets, captioners, samplers, fine-tuned models,
synthetic sets and classifier methods (the declarations are `mvc.registry`'s). `import mvc` loads this module, so
the tables are full before any params file is read; a user's own entries are `register_*` calls of their own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mvc.registry import (
    CaptionerSpec,
    Dataset,
    FineTunedModel,
    Method,
    Sampler,
    SyntheticSet,
    mvc_set_names,
    register_captioner,
    register_dataset,
    register_method,
    register_model,
    register_sampler,
    register_set,
)


def _mvc_guidance(g) -> tuple[float, float]:
    return g.guidance_text, g.guidance_image


# the built-in transforms (torchvision imported when a classifier is built, not when the config is read)


def _autoaugment(c) -> list:
    from torchvision.transforms import v2

    policy = {"imagenet": v2.AutoAugmentPolicy.IMAGENET, "cifar10": v2.AutoAugmentPolicy.CIFAR10,
              "svhn": v2.AutoAugmentPolicy.SVHN}[c.autoaugment_policy]
    return [v2.AutoAugment(policy)]


def _randaugment(c) -> list:
    from torchvision.transforms import v2

    return [v2.RandAugment(c.randaugment_num_ops, c.randaugment_magnitude)]


def _trivialaugment(c) -> list:
    from torchvision.transforms import v2

    return [v2.TrivialAugmentWide()]


def _mixup(c, num_classes: int):
    from torchvision.transforms import v2

    return v2.MixUp(alpha=c.mixup_alpha, num_classes=num_classes)


def _cutmix(c, num_classes: int):
    from torchvision.transforms import v2

    return v2.CutMix(alpha=c.cutmix_alpha, num_classes=num_classes)


def _mvc_sets(c) -> tuple[str, ...]:
    return mvc_set_names(c.mvc_modes)


def _one_set(name: str) -> Callable[[Any], tuple[str, ...]]:
    return lambda c: (name,)


# the built-in implementations, imported when first used (this module imports nothing heavy)


def _reader(name: str, **bound) -> Callable[[Any], Any]:
    def build(cfg):
        from mvc import datasets

        return getattr(datasets, name)(cfg, **bound)

    return build


def _captioner(name: str) -> Callable:
    def call(*args):
        from mvc import captioners

        return getattr(captioners, name)(*args)

    return call


def _draw(name: str) -> Callable[[Any], list]:
    def draw(batch):
        from mvc import samplers

        return getattr(samplers, name)(batch)

    return draw


register_dataset(Dataset("digits", _reader("DigitsReader"),
                         "scikit-learn's 8x8 digits (1,797 images, bundled: no download)"))
register_dataset(Dataset("cifar10", _reader("CifarReader", hundred=False),
                         "CIFAR-10, the python batches (cifar-10-batches-py)"))
register_dataset(Dataset("cifar100", _reader("CifarReader", hundred=True),
                         "CIFAR-100, the python batches (cifar-100-python)"))
register_dataset(Dataset("tiny_imagenet", _reader("TinyImageNetReader"),
                         "Tiny ImageNet 200 as distributed (train/<wnid>/images, val annotations)"))
register_dataset(Dataset("caltech101", _reader("Caltech101Reader"),
                         "Caltech-101 (101_ObjectCategories, BACKGROUND_Google left out)"))
register_dataset(Dataset("brain_tumor_mri", _reader("BrainTumorMRIReader"),
                         "the brain-tumour MRI set (Training/ and Testing/ class folders)"))
register_dataset(Dataset("imagefolder", _reader("ImageFolderReader"),
                         "your own images, one folder per class (torchvision's ImageFolder)"))


def _concepts(name: str) -> Callable:
    def call(*args):
        from mvc import concepts

        return getattr(concepts, name)(*args)

    return call


register_dataset(Dataset("concepts", _concepts("ConceptsReader"),
                         "the testbed with known concepts: coloured shapes whose labelled shots show only some "
                         "combinations of colour, background and size (mvc.concepts; drawn in-process, offline)",
                         factors=_concepts("source_factors")))

register_captioner(CaptionerSpec("attributes", _captioner("attribute_captioner"),
                                 summary="the offline attribute captioner (size, position, stroke, colour)"))
register_captioner(CaptionerSpec("factors", lambda cfg, device="cpu": _concepts("FactorCaptioner")(),
                                 summary="the concepts testbed's factors read from the pixels (colour, size, "
                                         "position, background), never the shape: where BLIP-2 stands"))
register_captioner(CaptionerSpec("blip2", _captioner("blip2_captioner"),
                                 weights=_captioner("blip2_parameters"), on_device=True,
                                 summary="BLIP-2 through transformers (caption.model, caption.question)"))

register_sampler(Sampler("conditioned", _draw("draw_conditioned"), image_conditioned=True))
register_sampler(Sampler("text", _draw("draw_text")))
register_sampler(Sampler("sdedit", _draw("draw_sdedit"), img2img=True, strengths=lambda g: [g.img2img_strength]))
register_sampler(Sampler("dafusion_sdedit", _draw("draw_dafusion"), img2img=True,
                         strengths=lambda g: g.dafusion_strengths))
register_sampler(Sampler("pool", _draw("draw_pool"), pool=True))
register_sampler(Sampler("pool_through_vae", _draw("draw_pool_through_vae"), pool=True))

register_model(FineTunedModel("mvc", "finetune", image_conditioned=True, training_mixing=None,
                              summary="MVC fine-tuning (Figure 3), under accelerate, for every shots level and "
                                      "replicate", always=True))
register_model(FineTunedModel("sd_finetuned", "finetune_sd_finetuned", image_conditioned=False, training_mixing=None,
                              summary="the sd_finetuned baseline: the backbone fine-tuned text-only with MVC's caption "
                                      "mixing (when generate.sets has sd_finetuned)"))
register_model(FineTunedModel("mvc_nomix_trained", "finetune_mvc_nomix_trained", image_conditioned=True,
                              training_mixing="none",
                              summary="the no-mixing-in-training ablation: MVC fine-tuned on own captions (when "
                                      "generate.sets has mvc_nomix_trained)"))
register_model(FineTunedModel("dafusion", "finetune_dafusion", image_conditioned=False, training_mixing="none",
                              trains="tokens", reads=("textual_inversion", "finetune.seed", "data.prompt_template"),
                              summary="DA-Fusion's per-class tokens: textual inversion of one token per class on the "
                                      "labelled images, the backbone frozen (when generate.sets has dafusion)"))

register_set(SyntheticSet("mvc", "mvc", "conditioned", guidance=_mvc_guidance, per_mode=True,
                          summary="the fine-tuned MVC model, conditioned on the source's latent and an MVC mix of its "
                                  "class's captions, one set per mode of generate.modes"))
register_set(SyntheticSet("sd_naive", "backbone", "text", role="naive",
                          summary="the backbone before fine-tuning, text only, the same prompts and noise as the "
                                  "first MVC set"))
register_set(SyntheticSet("sd_img2img", "backbone", "sdedit", mode=lambda g: "img2img",
                          summary="SDEdit of each source with its class prompt at a fixed t0 "
                                  "(generate.img2img_strength), as Real-Guidance does; no fine-tuning"))
register_set(SyntheticSet("dafusion", "dafusion", "dafusion_sdedit", mode=lambda g: "dafusion", guidance=7.5,
                          images_per_source=lambda g: g.dafusion_images_per_source,
                          summary="DA-Fusion: SDEdit of each source toward its class's learnt token "
                                  "(data.prompt_template with the token for the name), t0 drawn per image from "
                                  "generate.dafusion_strengths, M = generate.dafusion_images_per_source, s_T 7.5 "
                                  "(DA-Fusion's)"))
register_set(SyntheticSet("sd_finetuned", "sd_finetuned", "text",
                          summary="the text-only fine-tuned backbone, the sd_naive set's prompts and noise"))
register_set(SyntheticSet("mvc_nomix_trained", "mvc_nomix_trained", "conditioned", mode=lambda g: "none",
                          guidance=_mvc_guidance,
                          summary="MVC fine-tuned without mixing, from each source's own caption"))

# the oracles: what a perfect generator (of the same class, at MVC's M and p_synthetic) would give, at the backbone's
# bottleneck, and as wrong as MVC's images are; the baselines' upper bounds
register_set(SyntheticSet("oracle_real", "backbone", "pool", mode=lambda g: "real",
                          summary="oracle: a real pool image of the source's class in place of each generated one "
                                  "(the pool's labels, known to the kit as the judge's are; no classifier sees them "
                                  "otherwise)"))
register_set(SyntheticSet("oracle_generator_res", "backbone", "pool_through_vae", mode=lambda g: "real",
                          summary="oracle: those pool images through the backbone's bottleneck (backbone.resolution "
                                  "and its VAE's encode and decode): the best this generator can draw"))

register_method(Method("none", "real", color="#7f7f7f", curve=True, role="reference",
                       summary="no augmentation beyond crop (and flip)"))
register_method(Method("autoaugment", "classical", _autoaugment, summary="AutoAugment (classify.autoaugment_policy)"))
register_method(Method("randaugment", "classical", _randaugment, role="tuned_classical",
                       summary="RandAugment (num_ops, magnitude)"))
register_method(Method("trivialaugment", "classical", _trivialaugment, summary="TrivialAugmentWide"))
register_method(Method("mixup", "classical", batch=_mixup, summary="MixUp on whole batches"))
register_method(Method("cutmix", "classical", batch=_cutmix, summary="CutMix on whole batches"))
register_method(Method("real_two_phase", "real", two_phase=True,
                       summary="real images only, with mvc_two_phase's schedule (the schedule's own effect)"))
register_method(Method("source_pretrained", "real", source=True, color="#3d85c6", curve=True,
                       summary="the generator's extra data used directly: the same classifier trained on the labelled "
                               "source domain first, then on the labelled images"))
register_method(Method("sd_naive", "synthetic", sets=_one_set("sd_naive"), summary="the sd_naive set"))
register_method(Method("sd_img2img", "synthetic", sets=_one_set("sd_img2img"), color="#6aa84f", curve=True,
                       summary="the sd_img2img set (SDEdit)"))
register_method(Method("dafusion", "synthetic", sets=_one_set("dafusion"), color="#b45f06", curve=True,
                       summary="DA-Fusion (Trabucco et al., ICLR 2024): the dafusion set, each real image replaced "
                               "with chance classify.p_synthetic (DA-Fusion's 0.5)"))
register_method(Method("sd_finetuned", "synthetic", sets=_one_set("sd_finetuned"), color="#8e63ce", curve=True,
                       summary="the sd_finetuned set (text-only fine-tuned backbone)"))
register_method(Method("mvc_nomix", "mvc", sets=lambda c: mvc_set_names(["none"]), color="#e69138",
                       summary="the MVC model's images from each source's own caption (no mixing at generation)"))
register_method(Method("mvc_nomix_trained", "mvc", sets=_one_set("mvc_nomix_trained"), color="#e69138",
                       summary="the mvc_nomix_trained set (no mixing in training either)"))
register_method(Method("mvc", "mvc", sets=_mvc_sets, color="#e69138", curve=True, paired=True, role="under_test",
                       summary="MVC's sets of classify.mvc_modes"))
register_method(Method("mvc_two_phase", "mvc", sets=_mvc_sets, two_phase=True, color="#e69138", paired=True,
                       summary="MVC, then the last two_phase_fraction of steps on real images at a lower rate"))
register_method(Method("mvc_filtered", "mvc", sets=_mvc_sets, filtered=True, color="#e69138",
                       summary="MVC's sets, keeping only the images the judge (trained on val and pool, never on "
                               "test or the generation sources) labels as their intended class"))
register_method(Method("mvc_randaugment", "mvc", _randaugment, sets=_mvc_sets, color="#e69138",
                       summary="MVC's sets with RandAugment on every image"))
register_method(Method("oracle_real", "oracle", sets=_one_set("oracle_real"), color="#38761d",
                       summary="oracle: real pool images of the class at MVC's M and p_synthetic (the headroom of a "
                               "perfect generator)"))
register_method(Method("oracle_generator_res", "oracle", sets=_one_set("oracle_generator_res"), color="#6aa84f",
                       summary="oracle: those images through the generator's resolution and VAE"))
register_method(Method("oracle_noisy", "oracle", sets=_one_set("oracle_generator_res"), label_noise=True,
                       color="#93c47d",
                       summary="oracle: oracle_generator_res with a share 1 - f of its images from other classes, f "
                               "MVC's measured label fidelity (what MVC's fidelity alone would give)"))
register_method(Method("pseudo_label", "semi_supervised", pseudo_labels=True, color="#a64d79",
                       summary="self-training on the same unlabelled pool the generator learns from: pool images "
                               "pseudo-labelled by the `none` classifier at confidence >= "
                               "classify.pseudo_label_threshold replace real images of their class as MVC's do"))
