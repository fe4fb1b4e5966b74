"""Stable Diffusion behind the model contract, on a tiny random pipeline saved locally (no hub access)."""
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.config import parse_params
from pipeline.errors import ModelLoadError
from pipeline.models.loading import load_model
from pipeline.rl.policy import recompute_log_probs
from pipeline.sampling import sample_trajectories
from tests.conftest import SMOKE_PARAMS
from tests.sd_fixtures import IMAGE_SIZE, LATENT_SIZE, save_tiny_sd

PROMPTS = ["a red circle", "a blue square left of a green triangle", "a shape"]


def sd_raw(folder, **rl) -> dict:
    raw = yaml.safe_load(SMOKE_PARAMS.read_text())
    raw["model"] = {"kind": "stable_diffusion", "pretrained": str(folder)}
    raw["rl"].update({"pretrain_beta": 0.0, **rl})  # no image-caption stream for SD
    return raw


def sd_params(folder, **rl):
    return parse_params(sd_raw(folder, **rl), "sd-test")


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    return save_tiny_sd(tmp_path_factory.mktemp("sd") / "tiny-sd")


@pytest.fixture(scope="module")
def sd_model(sd_folder):
    return load_model(sd_folder, sd_params(sd_folder))


def _predict(model, seed=0):
    x = torch.randn(2, *model.sample_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.predict(x, torch.tensor([10, 900]), model.encode_prompts(PROMPTS[:2]))


def test_loads_by_path_as_latent_ddim_model(sd_model):
    from diffusers import DDIMScheduler

    from pipeline.models.stable_diffusion import StableDiffusionModel

    assert isinstance(sd_model, StableDiffusionModel)
    assert isinstance(sd_model.scheduler, DDIMScheduler)
    assert sd_model.scheduler.config.steps_offset == 1 and sd_model.scheduler.config.prediction_type == "epsilon"
    assert sd_model.sample_shape == (4, LATENT_SIZE, LATENT_SIZE)
    embeds = sd_model.encode_prompts(["a red circle", ""])
    assert embeds.shape == (2, sd_model.tokenizer.model_max_length, 32) and embeds.dtype == torch.float32
    # full fine-tune by default; the frozen parts stay frozen
    assert len(sd_model.trainable_unet_parameters()) == len(list(sd_model.unet.parameters()))
    assert not any(p.requires_grad for p in sd_model.vae.parameters())
    assert not any(p.requires_grad for p in sd_model.text_encoder.parameters())
    assert sd_model.autocast().__class__.__name__ == "nullcontext"  # mixed_precision "no"


def test_images_through_the_vae(sd_model):
    x0 = torch.randn(3, *sd_model.sample_shape, generator=torch.Generator().manual_seed(1))
    images = sd_model.to_images(x0)
    assert images.dtype == torch.uint8 and images.shape == (3, IMAGE_SIZE, IMAGE_SIZE, 3)
    # the same pixels diffusers' own pipeline decodes: vae.decode(latents / scaling_factor), postprocess
    from diffusers.image_processor import VaeImageProcessor

    with torch.no_grad():
        decoded = sd_model.vae.decode(x0 / sd_model.vae.config.scaling_factor).sample
    reference = (VaeImageProcessor().postprocess(decoded, output_type="np") * 255).round()
    assert abs(images.numpy().astype(float) - reference).max() <= 1
    latents = sd_model.from_images(images)
    assert latents.shape == x0.shape and torch.isfinite(latents).all()
    small = torch.randint(0, 255, (2, 16, 16, 3), dtype=torch.uint8)  # another size is resized first
    assert sd_model.from_images(small).shape == (2, *sd_model.sample_shape)


def test_guided_trajectories_recompute_to_ratio_one(sd_model):
    traj = sample_trajectories(sd_model, PROMPTS, [1, 2, 3], steps=4, guidance=3.0, eta=1.0)
    assert traj.latents.shape == (3, 5, 4, LATENT_SIZE, LATENT_SIZE) and traj.log_probs.shape == (3, 4)
    assert traj.images.shape == (3, IMAGE_SIZE, IMAGE_SIZE, 3) and traj.images.dtype == torch.uint8
    assert (traj.log_probs != 0).all()
    samples = torch.arange(3).repeat_interleave(4)
    steps = torch.arange(4).repeat(3)
    with torch.no_grad():
        log_prob = recompute_log_probs(sd_model, traj, samples, steps, uncond=sd_model.encode_prompts([""]),
                                       guidance=3.0, eta=1.0, clamp_x0=False)
    ratio = torch.exp(log_prob - traj.log_probs[samples, steps])
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5), ratio


def test_save_load_round_trip_is_a_diffusers_pipeline(sd_model, sd_folder, tmp_path):
    from diffusers import StableDiffusionPipeline

    sd_model.save_pretrained(tmp_path / "saved")
    index = yaml.safe_load((tmp_path / "saved" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["scheduler"] == ["diffusers", "DDIMScheduler"]
    loaded = load_model(tmp_path / "saved", sd_params(sd_folder))
    assert torch.equal(_predict(sd_model), _predict(loaded))
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "saved")
    assert pipe("a red circle", num_inference_steps=2, output_type="np").images.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3)


def test_lora_trains_only_adapters_and_saves_fused(sd_folder, tmp_path):
    from pipeline.rl.run import build_trainer

    params = sd_params(sd_folder, lora_rank=2)
    model = load_model(sd_folder, params)
    assert model.lora_rank == 0  # loading adds no adapters: sampling and the control use the plain UNet
    build_trainer(model, params, [])  # RL adds them
    trainable = dict((n, p) for n, p in model.unet.named_parameters() if p.requires_grad)
    assert trainable and all("lora_" in n for n in trainable)
    assert {id(p) for p in model.trainable_unet_parameters()} == {id(p) for p in trainable.values()}
    base = load_model(sd_folder, sd_params(sd_folder))
    assert torch.equal(_predict(model), _predict(base))  # B = 0 at init: LoRA starts as the identity

    before = {n: p.detach().clone() for n, p in model.unet.named_parameters()}
    optimizer = torch.optim.AdamW(model.trainable_unet_parameters(), lr=1e-2)
    x = torch.randn(2, *model.sample_shape, generator=torch.Generator().manual_seed(2))
    loss = model.predict(x, torch.tensor([100, 500]), model.encode_prompts(PROMPTS[:2])).square().mean()
    loss.backward()
    optimizer.step()
    changed = {n for n, p in model.unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(trainable) and any("lora_B" in n for n in changed)

    model.save_pretrained(tmp_path / "lora")  # adapters fused into a full UNet; the live model keeps them
    assert any("lora_" in n for n, _ in model.unet.named_parameters())
    fused = load_model(tmp_path / "lora", sd_params(sd_folder))
    assert not any("lora_" in n for n, _ in fused.unet.named_parameters())
    assert torch.allclose(_predict(model), _predict(fused), atol=1e-5)


def _options_model(**model_fields):
    from types import SimpleNamespace

    from pipeline.models.stable_diffusion import SDOptions, StableDiffusionModel
    from tests.sd_fixtures import build_tiny_sd_pipeline

    pipe = build_tiny_sd_pipeline()
    params = SimpleNamespace(model=SimpleNamespace(**model_fields), rl=SimpleNamespace(lora_rank=0), device="cpu")
    return StableDiffusionModel(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler,
                                SDOptions.from_params(params))


def test_resolution_option_sets_the_latent_size():
    model = _options_model(resolution=16)
    assert model.sample_shape == (4, 4, 4)
    assert model.to_images(torch.zeros(1, 4, 4, 4)).shape == (1, 16, 16, 3)
    with pytest.raises(ValueError, match="multiple"):
        _options_model(resolution=18)


def test_gradient_checkpointing_option():
    model = _options_model(gradient_checkpointing=True, mixed_precision="bf16")
    assert model.unet.is_gradient_checkpointing and model.mixed_precision == "bf16"

    def gradients(model):
        x = torch.randn(2, *model.sample_shape, generator=torch.Generator().manual_seed(0))
        model.train()
        model.predict(x, torch.tensor([300, 700]), model.encode_prompts(["a", "b"])).square().mean().backward()
        return [p.grad.clone() for p in model.trainable_unet_parameters()]

    checkpointed = gradients(_options_model(gradient_checkpointing=True))
    plain = gradients(_options_model(gradient_checkpointing=False))  # the same seeded weights
    assert len(plain) == len(checkpointed) and any(g.abs().max() > 0 for g in plain)
    for a, b in zip(checkpointed, plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert all(torch.isfinite(g).all() for g in gradients(model))  # under bf16 autocast on the CPU


def test_offline_hub_id_error_names_the_id(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = "no-such-org/not-cached-sd-model"
    with pytest.raises(ModelLoadError, match=source) as caught:
        load_model(source, sd_params(source))
    assert "model.pretrained" in str(caught.value) and "save_pretrained" in str(caught.value)


def test_base_pointer_folder_loads_the_named_model(sd_model, sd_folder, tmp_path):
    from pipeline.models.stable_diffusion import write_base_pointer

    write_base_pointer(tmp_path / "base", str(sd_folder))
    assert torch.equal(_predict(load_model(tmp_path / "base", sd_params(sd_folder))), _predict(sd_model))


@pytest.mark.parametrize("lora_rank", [0, 2])
def test_real_stages_on_tiny_sd(sd_folder, tmp_path, lora_rank):
    """prompts -> finetune (1 iteration, `area` reward) -> sample base and RL -> evaluate, by the stage CLIs.

    The base is a pointer folder, as `pretrain` would write for SD; with LoRA the RL model is saved fused.
    """
    import json

    from pipeline.models.stable_diffusion import write_base_pointer
    from stages import evaluate, finetune, prompts, sample

    base = tmp_path / "base"
    write_base_pointer(base, str(sd_folder))
    raw = sd_raw(sd_folder, lora_rank=lora_rank, iterations=1, optimizer_steps=1, train_timesteps=1, tasks=[
        {"name": "single", "reward": "area", "prompts": "single", "samples_per_prompt": 2,
         "prompts_per_iteration": 1, "advantage": "group"}])
    raw["prompts"] = {"train_per_task": 2, "eval_per_task": 1}
    raw["sampling"] = {"steps": 2, "guidance": 3.0, "seeds": [0], "diversity_seeds": 2, "batch_size": 16}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    common = ["--params", str(params), "--no-progress"]
    data = tmp_path / "data"
    prompts.main([*common, "--out", str(data / "prompts")])
    finetune.main([*common, "--base", str(base), "--prompts", str(data / "prompts"),
                   "--reward-model", str(data / "no-reward-model"), "--out", str(data / "rl"),
                   "--metrics", str(data / "train.json"), "--plots", str(data / "train.csv"),
                   "--budget", str(data / "budget.json"), "--checkpoints", str(tmp_path / "checkpoints")])
    assert json.loads((data / "train.json").read_text())["iterations"] == 1
    assert json.loads((data / "rl" / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    for name, model in (("base", base), ("rl", data / "rl")):
        sample.main([*common, "--model", str(model), "--prompts", str(data / "prompts"),
                     "--out", str(data / "samples" / name), "--name", f"sample_{name}"])
    evaluate.main([*common, "--samples", str(data / "samples"), "--reward-model", "",  # no learned judge
                   "--metrics", str(data / "eval.json"), "--plots", str(data / "plots")])
    metrics = json.loads((data / "eval.json").read_text())
    assert metrics["pairs"] > 0
    rl, plain = load_model(data / "rl"), load_model(sd_folder)
    assert rl.unet.state_dict().keys() == plain.unet.state_dict().keys()  # a plain UNet (LoRA fused)
    assert not torch.equal(_predict(rl), _predict(plain))  # the update reached the saved weights


def test_sd2_profile_has_table_6_settings():
    from pipeline.config import load_params

    params = load_params(Path(__file__).parents[1] / "params.sd2.yaml")
    rl, s = params.rl, params.sampling
    assert params.model.kind == "stable_diffusion" and params.model.pretrained == "stabilityai/stable-diffusion-2-base"
    assert params.model.resolution == 512 and params.model.mixed_precision == "bf16" and rl.lora_rank == 0
    assert (s.steps, s.guidance, rl.eta, rl.lr, rl.clip_range) == (50, 7.0, 1.0, 2e-6, 1e-4)
    assert (rl.adam_beta1, rl.adam_beta2, rl.adam_eps, rl.weight_decay) == (0.9, 0.999, 1e-8, 1e-2)
    assert [t.reward for t in rl.tasks] == ["clip_preference", "owl_detection", "clip_parity"]
    assert all(t.prompts_per_iteration * t.samples_per_prompt == 16 for t in rl.tasks)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 autocast is CUDA-only")
def test_bf16_autocast_on_cuda_returns_float32_close_to_fp32():
    model = _options_model(mixed_precision="bf16").to("cuda").eval()
    x = torch.randn(2, *model.sample_shape, generator=torch.Generator().manual_seed(0)).cuda()
    embeds = model.encode_prompts(PROMPTS[:2])
    with torch.no_grad():
        low = model.predict(x, torch.tensor([10, 900]), embeds)
        model.mixed_precision = "no"
        full = model.predict(x, torch.tensor([10, 900]), embeds)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert torch.allclose(low, full, atol=0.1 * float(full.abs().max()) + 1e-3)
