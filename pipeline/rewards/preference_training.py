"""Training the learned preference model (the `reward_model` stage's work).

Pairs for one prompt (`preference_data`: base samples, stream renders, mismatched scenes) are
labelled by several votes of the simulated rater panel and fitted with the Bradley-Terry loss on
the share of votes. `fit_reward_model` builds, labels, trains, and measures the held-out accuracy
beside the panel's own ceiling on the same choices.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.rewards.preference import PreferenceModel, num_parameters
from pipeline.progress import Progress
from pipeline.runtime import autocast
from pipeline.rewards.preference_data import build_pairs, vote, win_probabilities
from pipeline.world.panel import RaterPanel, label_seed, make_panel
from pipeline.world.realism import Realism


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
    """Cross-entropy of P(a > b) = sigmoid(s_a - s_b) against labels in [0, 1] (the share of votes for a;
    0 or 1 for one rater's choice, where it is -log sigmoid(s_preferred - s_other)), averaged over pairs."""
    diff, y = scores_a - scores_b, labels.float().to(scores_a.device)
    return (y * F.softplus(-diff) + (1 - y) * F.softplus(diff)).mean()


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
                           mixed_precision: str = "no", progress: bool = False) -> tuple[PreferenceModel, dict]:
    """Fit a PreferenceModel to labelled pairs (labels: 1 = a preferred) with the Bradley-Terry loss.

    With `augment`, half of each batch's pairs are mirrored left-right (the caption's "left" and
    "right" swapped to match): the panel's qualities do not change under the mirror. `mixed_precision`
    "bf16" runs the training forward passes under bf16 autocast (~1.45x faster on a CPU with AVX-512
    BF16, bench/RESULTS.md); the loss, the weights and the held-out scoring stay float32.

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
    bar = Progress("training", total_steps, enabled=progress)
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
            with autocast(device, mixed_precision):
                s_a, s_b = _pair_scores(model, batch_a, batch_b, batch_prompts)
            loss = bradley_terry_loss(s_a.float(), s_b.float(), labels[rows].to(s_a.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            running.append(loss.item())
            bar.update(epoch=epoch + 1, loss=float(np.mean(running)))
    bar.close()
    model.eval()
    metrics = {"train_pairs": int(len(train)), "heldout_pairs": int(len(held)), "parameters": num_parameters(model)}
    for name, rows in (("train", train), ("heldout", held)):
        s_a = model.score(images_a[rows], [prompts[i] for i in rows])
        s_b = model.score(images_b[rows], [prompts[i] for i in rows])
        metrics[f"{name}_accuracy"] = pair_accuracy(s_a, s_b, labels[rows])
        metrics[f"{name}_loss"] = float(bradley_terry_loss(s_a, s_b, labels[rows]))
    return model, metrics


def panel_self_agreement(panel: RaterPanel, images_a: torch.Tensor, images_b: torch.Tensor, prompts: Sequence,
                         seed: int = 0, probabilities: torch.Tensor | None = None) -> float:
    """Share of pairs on which two independent panel draws (random rater, Bradley-Terry) agree
    (`probabilities`: the pairs' `win_probabilities`, when already computed)."""
    if probabilities is None:
        probabilities = panel.win_probabilities(images_a, images_b, prompts)
    first = panel.draw_labels(probabilities, torch.Generator().manual_seed(int(seed)))
    second = panel.draw_labels(probabilities, torch.Generator().manual_seed(int(seed) + 1))
    return float((first == second).float().mean())


def panel_best_accuracy(panel: RaterPanel, images_a: torch.Tensor, images_b: torch.Tensor, prompts: Sequence,
                        labels: torch.Tensor) -> float:
    """Accuracy of the panel's own mean-utility ordering against its labels: a learned model's ceiling."""
    return pair_accuracy(panel.utility(images_a, prompts), panel.utility(images_b, prompts), torch.as_tensor(labels))


def fit_labelled_pairs(dataset: dict, panel: RaterPanel, reward_params, seed: int, device: str = "cpu",
                       mixed_precision: str = "no", progress: bool = False) -> tuple[PreferenceModel, dict]:
    """Label a pair dataset with `reward_params.votes` panel votes a pair, train on the vote shares, and
    measure the held-out pairs against one fresh rater's choice each, beside the panel's own noise-free
    verdict (its mean utility) on the same choices: the ceiling a learned model can reach."""
    a, b, prompts = dataset["images_a"], dataset["images_b"], list(dataset["prompts"])
    probabilities = win_probabilities(panel, a, b, prompts, progress)
    votes = vote(panel, a, b, prompts, reward_params.votes, torch.Generator().manual_seed(label_seed(seed)),
                 probabilities)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
        torch.manual_seed(seed)
        model = PreferenceModel(channels=reward_params.channels)
    model, metrics = train_preference_model(
        a, b, prompts, votes, epochs=reward_params.epochs, lr=reward_params.lr, model=model,
        batch_size=reward_params.batch_size, holdout_fraction=reward_params.holdout_fraction, seed=seed,
        device=device, mixed_precision=mixed_precision, progress=progress,
    )
    _, held = split_indices(len(prompts), reward_params.holdout_fraction, seed)
    held_prompts = [prompts[i] for i in held]
    choice = vote(panel, a[held], b[held], held_prompts, 1, torch.Generator().manual_seed(label_seed(seed) + 2),
                  probabilities[:, torch.as_tensor(held)])
    scores_a, scores_b = model.score(a[held], held_prompts), model.score(b[held], held_prompts)
    utility_a, utility_b = panel.utility(a[held], held_prompts), panel.utility(b[held], held_prompts)
    noise_free = (utility_a > utility_b).float() + 0.5 * (utility_a == utility_b).float()
    metrics.update(
        pairs=len(prompts),
        votes=reward_params.votes,
        heldout_accuracy=pair_accuracy(scores_a, scores_b, choice),
        panel_best_accuracy=pair_accuracy(utility_a, utility_b, choice),
        heldout_agreement_noise_free=pair_accuracy(scores_a, scores_b, noise_free),
        panel_self_agreement=panel_self_agreement(panel, a, b, prompts, seed=label_seed(seed) + 1,
                                                  probabilities=probabilities),
        label_mean=float(votes.float().mean()),
    )
    metrics["accuracy_gap"] = metrics["panel_best_accuracy"] - metrics["heldout_accuracy"]
    sources = np.asarray(dataset.get("source", ["all"] * len(prompts)))[held]
    for name in dict.fromkeys(sources.tolist()):
        rows = torch.from_numpy(sources == name)
        metrics[f"{name}.heldout_accuracy"] = pair_accuracy(scores_a[rows], scores_b[rows], choice[rows])
        metrics[f"{name}.panel_best_accuracy"] = pair_accuracy(utility_a[rows], utility_b[rows], choice[rows])
        metrics[f"{name}.heldout_pairs"] = int(rows.sum())
    return model, metrics


def fit_reward_model(model, records: Sequence, reward_params, sampling, world, seed: int, *, device: str = "cpu",
                     progress: bool = False) -> tuple[PreferenceModel, dict]:
    """The `reward_model` stage: pairs from every source (`preference_data.build_pairs`: base samples of
    `model`, the pretraining stream's renders of `world`), panel votes, training, held-out measures.

    `records` are the preference corpus's train records (prompt and spec). Metrics: heldout_accuracy and
    panel_best_accuracy (one fresh rater's choice per held-out pair; the second is the panel's noise-free
    verdict, the ceiling), accuracy_gap, heldout_agreement_noise_free, panel_self_agreement, per-source
    accuracies, pair counts and the training losses. The preference model trains under the base model's
    `mixed_precision` (`model.mixed_precision`: bf16 autocast where the machine has it).
    """
    dataset = build_pairs(model, records, reward_params, sampling, Realism.from_params(world.stream),
                          world.resolution, seed, progress=progress)
    return fit_labelled_pairs(dataset, make_panel(reward_params), reward_params, seed, device=device,
                              mixed_precision=model.mixed_precision, progress=progress)
