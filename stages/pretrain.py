"""Stage `pretrain`: pretrain the tiny base model on the shapes-world stream, then measure it.

Writes the model (diffusers/transformers `save_pretrained` layout) and pretrain.json: the loss
and detector accuracy of DDIM samples on the eval prompts, single- and two-object. Resumes from
its checkpoints (kept outside DVC outputs, keyed by the params that shape training).
"""
from __future__ import annotations

from pathlib import Path

from stages._cli import machine, parser, run_main


def main(argv: list[str] | None = None) -> None:
    p = parser("pretrain", __doc__)
    p.add_argument("--prompts", default="data/prompts", help="prompt corpora folder (eval prompts)")
    p.add_argument("--out", default="data/models/base", help="model output folder")
    p.add_argument("--metrics", default="data/metrics/pretrain.json")
    p.add_argument("--checkpoints", default="checkpoints", help="checkpoint root (not a DVC output)")
    args = p.parse_args(argv)

    def body(params) -> None:
        from pipeline.checkpoints import run_key
        from pipeline.io import atomic_path, write_json
        from pipeline.models.loading import new_tiny_model
        from pipeline.models.tiny import MODEL_INDEX
        from pipeline.outputs import Output, check_outputs
        from pipeline.pretraining import pretrain, scene_stream
        from pipeline.stage_lib import accuracy_rows, evaluate_accuracy
        from pipeline.tracking import StageRun

        check_outputs("pretrain", [Output("--out", args.out, folder=True, marker=MODEL_INDEX),
                                   Output("--metrics", args.metrics)],
                      {"--params": args.params, "--prompts": args.prompts, "--checkpoints": args.checkpoints})

        if params.model.kind == "stable_diffusion":  # the base is the configured hub id or folder
            from pipeline.models.stable_diffusion import write_base_pointer

            with atomic_path(Path(args.out), directory=True) as tmp:
                write_base_pointer(tmp, params.model.pretrained)
            write_json(args.metrics, {"steps": 0})
            print(f"pretrain: base is {params.model.pretrained} (pointer in {args.out})")
            return
        pt = params.pretrain
        rows = accuracy_rows(args.prompts, params)
        key = run_key("pretrain", params, params.world, params.model, pt)
        with StageRun("pretrain", params.model_dump(mode="json")) as run:
            model = new_tiny_model(params)
            stream = scene_stream(params.world, params.seed)
            result = pretrain(model, stream, steps=pt.steps, batch_size=pt.batch_size, lr=pt.lr,
                              warmup_steps=pt.warmup_steps, weight_decay=pt.weight_decay, ema_decay=pt.ema_decay,
                              caption_dropout=pt.caption_dropout, seed=params.seed,
                              checkpoint_dir=Path(args.checkpoints) / key, checkpoint_every=pt.checkpoint_every,
                              checkpoint_keep=params.checkpoint_keep, log_every=pt.log_every, log_fn=run.log_metrics)
            accuracy = evaluate_accuracy(result.model, rows, params, label="sampling the eval prompts")
            metrics = {"loss": result.losses[-1][1] if result.losses else float("nan"), "steps": result.steps,
                       **accuracy}
            with atomic_path(Path(args.out), directory=True) as tmp:
                result.model.save_pretrained(tmp)
            write_json(args.metrics, metrics)
            run.log_metrics({**accuracy, "seconds": result.seconds})
            run.log_outputs(args.metrics, models={"base": args.out})
        print(f"pretrain: {result.steps} steps in {result.seconds / 60:.1f} min ({machine(params)}), final loss "
              f"{metrics['loss']:.4f}; the base draws single-object prompts exactly right in "
              f"{accuracy.get('single_exact', float('nan')):.1%} of images, two-object prompts in "
              f"{accuracy.get('two_exact', float('nan')):.1%} -> {args.out}")

    run_main("pretrain", args, body)


if __name__ == "__main__":
    main()
