"""Stage `reward_model`: learn the preference reward from rater-panel labels.

Samples image pairs from the base model on the preference prompts, has the simulated rater panel
label them (Bradley-Terry draws), trains a small preference model, and reports its held-out pair
accuracy beside the panel's own self-agreement. The learned model is the training reward; the
panel is only ever a judge.
"""
from __future__ import annotations

from stages._cli import parser, run_main


def main(argv: list[str] | None = None) -> None:
    p = parser("reward_model", __doc__)
    p.add_argument("--base", default="data/models/base", help="model whose samples are labelled")
    p.add_argument("--prompts", default="data/prompts")
    p.add_argument("--out", default="data/models/reward")
    p.add_argument("--metrics", default="data/metrics/reward_model.json")
    args = p.parse_args(argv)

    def body(params) -> None:
        import time
        from pathlib import Path

        from pipeline.io import atomic_path, read_jsonl, write_json
        from pipeline.models.loading import load_model
        from pipeline.outputs import Output, check_outputs
        from pipeline.rewards.preference import CONFIG_NAME
        from pipeline.rewards.preference_training import fit_reward_model
        from pipeline.tracking import StageRun
        from pipeline.world.captions import record_problem

        check_outputs("reward_model", [Output("--out", args.out, folder=True, marker=CONFIG_NAME),
                                       Output("--metrics", args.metrics)],
                      {"--params": args.params, "--base": args.base, "--prompts": args.prompts})

        records = read_jsonl(Path(args.prompts) / "preference.train.jsonl", required=("prompt",),
                             check=record_problem)
        model = load_model(args.base, params)
        began = time.monotonic()
        with StageRun("reward_model", params.model_dump(mode="json")) as run:
            reward, metrics = fit_reward_model(model, records, params.reward_model, params.sampling, params.world,
                                               params.seed, device=params.device, progress=True)
            with atomic_path(Path(args.out), directory=True) as tmp:
                reward.save_pretrained(tmp)
            flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            write_json(args.metrics, flat)
            run.log_metrics({**flat, "seconds": time.monotonic() - began})
            run.log_outputs(args.metrics, models={"reward": args.out})
        print(f"reward_model: {flat.get('train_pairs', 0)} labelled pairs trained on, {flat.get('heldout_pairs', 0)} "
              f"held out, in {(time.monotonic() - began) / 60:.1f} min; on the held-out pairs it agrees with a fresh "
              f"rater {flat.get('heldout_accuracy', float('nan')):.1%} of the time, the panel's noise-free verdict "
              f"(the ceiling) {flat.get('panel_best_accuracy', float('nan')):.1%} -> {args.out}")

    run_main("reward_model", args, body)


if __name__ == "__main__":
    main()
