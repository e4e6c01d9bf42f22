"""What a model directory is: the library behind ``oscar info`` without files."""

from __future__ import annotations

from pathlib import Path

from oscar.store.pretrained import FINGERPRINT_BYTES, LoadedModel, embedded_model_dir


def describe_model(loaded: LoadedModel) -> dict:
    """A loaded model (``oscar.store.pretrained.LoadedModel``) as a JSON-ready dict: what identifies
    it, what it is made of and its rate table. Parameters are counted as loaded (a UNet LoRA
    merged into the UNet's weights; its stored factors are counted apart)."""
    model, config = loaded.model, loaded.model.config

    def count(*modules) -> int:
        return sum(p.numel() for m in modules if m is not None for p in m.parameters())

    vae = model.vae
    parameters = {
        "vae_encoder": count(vae.encoder, getattr(vae, "quant_conv", None)),
        "vae_decoder": count(vae.decoder, getattr(vae, "post_quant_conv", None)),
        "unet": count(model.unet),
        "hyper_coders": count(model.hyper),
        "prompt": model.prompt_embedding.numel(),
    }
    parameters["total"] = sum(parameters.values())
    adapter = model.unet_adapter
    lora = None
    if config.lora is not None:
        lora = {
            "rank": config.lora.rank,
            "alpha": config.lora.alpha,
            "modules": len(adapter.lora) if adapter is not None else 0,
            "stored_values": sum(t.numel() for t in adapter.tensors.values()) if adapter else 0,
        }
    decoder = None
    if config.vae_decoder is not None:
        d = config.vae_decoder
        decoder = {
            "block_out_channels": list(d.block_out_channels),
            "layers_per_block": list(d.depths),
            "pixel_shuffle": d.pixel_shuffle,
        }
    levels = []
    for rate in config.levels:
        entry = {
            "level": rate.level,
            "nominal_bpp": rate.nominal_bpp,
            "grid_factor": rate.grid_factor,
            "codebook_size": rate.codebook_size,
            "timestep": rate.timestep,
            "cosine": rate.cosine,
            "prior_entropy_bits": None,
        }
        if loaded.priors is not None and rate.level in loaded.priors.tables:
            entry["prior_entropy_bits"] = loaded.priors.entropy_bits(rate.level)
        levels.append(entry)
    directory = Path(loaded.directory)
    return {
        "model": str(directory),
        "name": config.name,
        "embedded": directory.resolve() == embedded_model_dir().resolve(),
        "fingerprint": loaded.fingerprint.hex(),
        "file_fingerprint": loaded.fingerprint[:FINGERPRINT_BYTES].hex(),
        "base_model": config.base_model,
        "parameters": parameters,
        "lora": lora,
        "vae_decoder": decoder,
        "latent_channels": vae.config.latent_channels,
        "priors": loaded.priors is not None,
        "levels": levels,
    }
