"""Training the learned preference model (the `reward_model` stage's work).

Pairs of samples of one prompt are labelled by the simulated rater panel and fitted with the
Bradley-Terry loss -log sigmoid(s_preferred - s_other). `fit_reward_model` samples the pairs from
the base model, labels them, trains, and measures the held-out accuracy beside the panel's own
self-agreement and its ceiling.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.rewards.preference import PreferenceModel, num_parameters
from pipeline.world.panel import RaterPanel, label_seed, make_panel


def split_indices(n: int, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded (train, held-out) split of range(n); both non-empty when n >= 2."""
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    if n < 2:
        raise ValueError(f"need at least 2 pairs to hold some out, got {n}")
    order = np.random.default_rng([seed, 1]).permutation(n)
    held = min(n - 1, max(1, int(round(holdout_fraction * n))))
    return np.sort(order[held:]), np.sort(order[:held])


def pair_accuracy(scores_a: torch.Tensor, scores_b: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of pairs whose score order agrees with the label (1 = a preferred); ties count half."""
    if len(labels) == 0:
        return float("nan")
    diff = scores_a.float() - scores_b.float()
    predicted = torch.where(diff == 0, torch.full_like(diff, 0.5), (diff > 0).float())
    return float((1.0 - (predicted - labels.float()).abs()).mean())


def bradley_terry_loss(scores_a: torch.Tensor, scores_b: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(s_preferred - s_other), averaged over pairs."""
    sign = labels.float() * 2 - 1
    return F.softplus(-sign * (scores_a - scores_b)).mean()


_MIRROR = {"left": "right", "right": "left"}


def mirror_prompt(prompt: str) -> str:
    """The caption of the horizontally mirrored image: "left" and "right" swap."""
    return " ".join(_MIRROR.get(word.lower(), word) for word in prompt.split())


def _pair_scores(model: PreferenceModel, a: torch.Tensor, b: torch.Tensor, prompts: list[str]):
    both = model(torch.cat([a, b]), prompts + prompts)
    return both[: len(prompts)], both[len(prompts) :]


def train_preference_model(images_a: torch.Tensor, images_b: torch.Tensor, prompts: Sequence[str],
                           labels: torch.Tensor, *, epochs: int = 20, lr: float = 1e-3, batch_size: int = 64,
                           holdout_fraction: float = 0.2, seed: int = 0, weight_decay: float = 0.1,
                           model: PreferenceModel | None = None, device: str = "cpu", augment: bool = True,
                           progress: bool = False) -> tuple[PreferenceModel, dict]:
    """Fit a PreferenceModel to labelled pairs (labels: 1 = a preferred) with the Bradley-Terry loss.

    With `augment`, half of each batch's pairs are mirrored left-right (the caption's "left" and
    "right" swapped to match): the panel's qualities do not change under the mirror.

    Returns the model (eval mode) and metrics: heldout_accuracy, heldout_loss, train_accuracy,
    train_loss, train_pairs, heldout_pairs, parameters.
    """
    prompts = list(prompts)
    n = len(prompts)
    if not (len(images_a) == len(images_b) == len(labels) == n):
        raise ValueError(f"pairs disagree in length: {len(images_a)} a, {len(images_b)} b, {len(labels)} labels, "
                         f"{n} prompts")
    labels = torch.as_tensor(labels).float()
    train, held = split_indices(n, holdout_fraction, seed)
    if model is None:
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
            torch.manual_seed(seed)
            model = PreferenceModel()
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total_steps = epochs * math.ceil(len(train) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(1, total_steps),
                                                   pct_start=0.1, anneal_strategy="cos")
    rng = np.random.default_rng([seed, 2])
    model.train()
    for epoch in range(epochs):
        order = train[rng.permutation(len(train))]
        running = []
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch_prompts = [prompts[i] for i in rows]
            batch_a, batch_b = images_a[rows], images_b[rows]
            if augment:  # mirror half the pairs (both images), swapping "left" and "right"
                flip = torch.from_numpy(rng.random(len(rows)) < 0.5)
                width = 2 if batch_a.dtype == torch.uint8 else 3  # (B, H, W, 3) uint8 or (B, 3, H, W) float
                batch_a = torch.where(flip[:, None, None, None], batch_a.flip(width), batch_a)
                batch_b = torch.where(flip[:, None, None, None], batch_b.flip(width), batch_b)
                batch_prompts = [mirror_prompt(p) if f else p for p, f in zip(batch_prompts, flip.tolist())]
            s_a, s_b = _pair_scores(model, batch_a, batch_b, batch_prompts)
            loss = bradley_terry_loss(s_a, s_b, labels[rows].to(s_a.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            running.append(loss.item())
        if progress:
            print(f"reward model epoch {epoch + 1}/{epochs}: train loss {np.mean(running):.4f}")
    model.eval()
    metrics = {"train_pairs": int(len(train)), "heldout_pairs": int(len(held)), "parameters": num_parameters(model)}
    for name, rows in (("train", train), ("heldout", held)):
        s_a = model.score(images_a[rows], [prompts[i] for i in rows])
        s_b = model.score(images_b[rows], [prompts[i] for i in rows])
        metrics[f"{name}_accuracy"] = pair_accuracy(s_a, s_b, labels[rows])
        metrics[f"{name}_loss"] = float(bradley_terry_loss(s_a, s_b, labels[rows]))
    return model, metrics


def panel_self_agreement(panel: RaterPanel, images_a: torch.Tensor, images_b: torch.Tensor, prompts: Sequence,
                         seed: int = 0) -> float:
    """Share of pairs on which two independent panel draws (random rater, Bradley-Terry) agree."""
    probabilities = panel.win_probabilities(images_a, images_b, prompts)
    first = panel.draw_labels(probabilities, torch.Generator().manual_seed(int(seed)))
    second = panel.draw_labels(probabilities, torch.Generator().manual_seed(int(seed) + 1))
    return float((first == second).float().mean())


def panel_best_accuracy(panel: RaterPanel, images_a: torch.Tensor, images_b: torch.Tensor, prompts: Sequence,
                        labels: torch.Tensor) -> float:
    """Accuracy of the panel's own mean-utility ordering against its labels: a learned model's ceiling."""
    return pair_accuracy(panel.utility(images_a, prompts), panel.utility(images_b, prompts), torch.as_tensor(labels))


def _prompt_text(prompt) -> str:
    return prompt["prompt"] if isinstance(prompt, dict) else str(prompt)


def build_preference_dataset(model, prompts: Sequence, *, pairs: int, seed: int, steps: int, guidance: float,
                             batch_size: int = 64, eta: float = 1.0, progress: bool = False) -> dict:
    """Image pairs for preference labelling: `pairs` prompts drawn (seeded) from `prompts`, two seeds each.

    Samples with `pipeline.sampling.sample_images` (eta 1.0 for variety). Returns
    {"images_a", "images_b": uint8 (N, H, W, 3), "prompts": list[str], "seeds_a", "seeds_b": list[int]}.
    """
    from pipeline.sampling import sample_images

    texts = [_prompt_text(p) for p in prompts]
    if not texts:
        raise ValueError("build_preference_dataset needs at least one prompt")
    if pairs < 1:
        raise ValueError(f"pairs must be positive, got {pairs}")
    rng = np.random.default_rng([seed, 3])
    chosen = [texts[i] for i in rng.integers(0, len(texts), size=pairs)]
    seeds = rng.choice(2**31 - 1, size=2 * pairs, replace=False).astype(int).tolist()
    seeds_a, seeds_b = seeds[:pairs], seeds[pairs:]
    images = sample_images(model, chosen + chosen, seeds_a + seeds_b, steps=steps, guidance=guidance, eta=eta,
                           batch_size=batch_size, progress=progress)
    return {"images_a": images[:pairs], "images_b": images[pairs:], "prompts": chosen,
            "seeds_a": seeds_a, "seeds_b": seeds_b}


def fit_labelled_pairs(dataset: dict, panel: RaterPanel, reward_params, seed: int, device: str = "cpu",
                       progress: bool = False) -> tuple[PreferenceModel, dict]:
    """Label a pair dataset with the panel, train, and measure against the panel's own consistency."""
    a, b, prompts = dataset["images_a"], dataset["images_b"], list(dataset["prompts"])
    labels = panel.label_pairs(a, b, prompts, torch.Generator().manual_seed(label_seed(seed)))
    model, metrics = train_preference_model(
        a, b, prompts, labels, epochs=reward_params.epochs, lr=reward_params.lr,
        batch_size=reward_params.batch_size, holdout_fraction=reward_params.holdout_fraction, seed=seed,
        device=device, progress=progress,
    )
    _, held = split_indices(len(prompts), reward_params.holdout_fraction, seed)
    held_prompts = [prompts[i] for i in held]
    metrics.update(
        pairs=len(prompts),
        panel_self_agreement=panel_self_agreement(panel, a, b, prompts, seed=label_seed(seed) + 1),
        panel_best_accuracy=panel_best_accuracy(panel, a[held], b[held], held_prompts, labels[held]),
        label_mean=float(labels.float().mean()),
    )
    return model, metrics


def fit_reward_model(model, prompts: Sequence, reward_params, sampling, seed: int, *, device: str = "cpu",
                     progress: bool = False) -> tuple[PreferenceModel, dict]:
    """The `reward_model` stage: sample pairs from `model`, label them with the panel, train, measure.

    `reward_params` is a RewardModelParams, `sampling` a SamplingParams (steps, guidance,
    batch_size; eta is 1.0 here for variety). Metrics: heldout_accuracy, panel_self_agreement,
    panel_best_accuracy (held-out pairs, the panel's mean utility against its labels: the
    ceiling), pairs, train_pairs, and the training losses.
    """
    dataset = build_preference_dataset(model, prompts, pairs=reward_params.pairs, seed=seed, steps=sampling.steps,
                                       guidance=sampling.guidance, batch_size=sampling.batch_size, progress=progress)
    return fit_labelled_pairs(dataset, make_panel(reward_params), reward_params, seed, device=device,
                              progress=progress)
