"""The tiny model: real diffusers/transformers classes, save_pretrained/from_pretrained round trip."""
import pytest
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel

from pipeline.errors import ModelLoadError
from pipeline.models.loading import load_model


def test_round_trip_gives_identical_outputs(tiny_model_factory, tmp_path):
    model = tiny_model_factory(seed=3)
    assert isinstance(model.unet, UNet2DConditionModel) and isinstance(model.text_encoder, CLIPTextModel)
    assert isinstance(model.scheduler, DDIMScheduler) and model.vae is None
    model.save_pretrained(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    x = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = model.predict(x, torch.tensor([10, 900]), model.encode_prompts(["a red circle", "a blue shape"]))
        b = loaded.predict(x, torch.tensor([10, 900]), loaded.encode_prompts(["a red circle", "a blue shape"]))
    assert torch.equal(a, b)
    assert loaded.scheduler.config.prediction_type == "v_prediction"


def test_tokenizer_is_word_level(tiny_model_factory):
    tokenizer = tiny_model_factory().tokenizer
    ids = tokenizer("a red circle left of a blue square")["input_ids"]
    assert len(ids) == 8 + 2  # one token a word plus <bos>/<eos>
    assert tokenizer.unk_token_id not in ids


def test_pooled_embedding_is_token_zero(tiny_model_factory):
    model = tiny_model_factory()
    embeds = model.encode_prompts(["a red circle", ""])
    assert embeds.shape == (2, 17, 16)
    out = model.text_encoder(**model.tokenizer(["a red circle"], padding="max_length", max_length=16,
                                              return_tensors="pt"))
    assert torch.allclose(embeds[0, 0], out.pooler_output[0], atol=1e-6)


def test_truncated_weights_error_names_the_folder(tiny_model_factory, tmp_path):
    tiny_model_factory().save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match=str(tmp_path / "m")):
        load_model(tmp_path / "m")
    with pytest.raises(ModelLoadError, match="model folder not found"):
        load_model(tmp_path / "missing")


def test_same_params_and_seed_give_the_same_pretrain_metrics(smoke_workspace, tmp_path):
    from stages import pretrain
    from tests.conftest import SMOKE_PARAMS

    pretrain.main(["--params", str(SMOKE_PARAMS), "--prompts", str(smoke_workspace / "prompts"), "--out",
                   str(tmp_path / "base"), "--metrics", str(tmp_path / "pretrain.json"), "--checkpoints",
                   str(tmp_path / "checkpoints"), "--no-progress"])
    assert (tmp_path / "pretrain.json").read_text() == (smoke_workspace / "pretrain.json").read_text()
    a = (tmp_path / "base/unet/diffusion_pytorch_model.safetensors").read_bytes()
    assert a == (smoke_workspace / "base/unet/diffusion_pytorch_model.safetensors").read_bytes()


def test_gradient_checkpointing_option_reaches_the_tiny_unet_and_keeps_its_gradients(smoke_params, tmp_path):
    """`model.gradient_checkpointing` used to be honoured by Stable Diffusion only; the tiny model now
    recomputes UNet activations in backward too, with the same gradients."""
    from pipeline.models.loading import new_tiny_model

    def unet_gradients(params):
        torch.manual_seed(0)
        model = new_tiny_model(params).train()
        x = torch.randn(4, *model.sample_shape)
        embeds = model.encode_prompts(["a red circle", "a blue square", "", "a small green triangle"])
        model.predict(x, torch.tensor([10, 200, 500, 900]), embeds).square().mean().backward()
        return model, [p.grad.clone() for p in model.unet.parameters()]

    plain_model, plain = unet_gradients(smoke_params)
    assert not plain_model.unet.is_gradient_checkpointing
    checkpointed_params = smoke_params.model_copy(
        update={"model": smoke_params.model.model_copy(update={"gradient_checkpointing": True})})
    checkpointed_model, checkpointed = unet_gradients(checkpointed_params)
    assert checkpointed_model.unet.is_gradient_checkpointing
    assert len(plain) == len(checkpointed)
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    checkpointed_model.save_pretrained(tmp_path / "m")
    assert load_model(tmp_path / "m", checkpointed_params).unet.is_gradient_checkpointing
    assert not load_model(tmp_path / "m", smoke_params).unet.is_gradient_checkpointing


def test_resumed_pretraining_keeps_the_partial_loss_average_and_the_elapsed_time(tiny_model_factory, tmp_path):
    """Resumed at step 4 with log_every 3: the last logged loss (steps 4-6) must include step 4, whose
    loss was taken before the interruption; the wall time must include the first launch's."""
    from pipeline.pretraining import pretrain
    from pipeline.world.stream import SceneStream

    def run():
        torch.manual_seed(0)
        return pretrain(tiny_model_factory(seed=0).train(), SceneStream(3), steps=6, batch_size=4, lr=1e-3,
                        warmup_steps=1, weight_decay=0.0, ema_decay=0.0, caption_dropout=0.1, seed=0,
                        checkpoint_dir=tmp_path / "ck", checkpoint_every=2, log_every=3, progress=False)

    from tests.conftest import checkpoint_stamp

    straight = run()  # leaves checkpoints at steps 2 and 4
    assert [step for step, _ in straight.losses] == [3, 6]
    stamps = [checkpoint_stamp(tmp_path / "ck", f"step-00000{k}.pt") for k in (2, 4)]
    resumed = run()  # resumes from step 4
    assert [checkpoint_stamp(tmp_path / "ck", s[0]) for s in stamps] == stamps, "the second run started over"
    assert resumed.losses == straight.losses
    assert resumed.seconds > straight.seconds * 0.5  # steps 1-4 ran in the first launch only
