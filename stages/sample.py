"""Stages `sample_base`, `sample_rl`, `sample_control`: sample every eval prompt x seed with a model.

Noise is fixed by (prompt, seed), so the three models are compared on identical pairs. The sampler
check: the preference eval prompts and seeds again with eta = sampling.check_eta, into `<out>/check/`
(none when it is null).
"""
from __future__ import annotations

from stages._cli import machine, parser, run_main


def main(argv: list[str] | None = None) -> None:
    p = parser("sample", __doc__)
    p.add_argument("--model", required=True, help="model folder (or hub id for Stable Diffusion)")
    p.add_argument("--prompts", default="data/prompts", help="prompt corpora folder")
    p.add_argument("--out", required=True, help="output folder: PNGs + index.jsonl")
    p.add_argument("--name", default=None, help="stage name for tracking (default: sample_<out folder name>)")
    args = p.parse_args(argv)

    def body(params) -> None:
        import time
        from pathlib import Path

        from pipeline.models.loading import load_model
        from pipeline.eval_sets import check_rows, eval_rows, sample_rows
        from pipeline.outputs import Output, check_outputs
        from pipeline.samples import INDEX, write_samples
        from pipeline.tracking import StageRun

        name = args.name or f"sample_{Path(args.out).name}"
        check_outputs(name, [Output("--out", args.out, folder=True, marker=INDEX)],
                      {"--params": args.params, "--model": args.model, "--prompts": args.prompts})
        rows, check = eval_rows(args.prompts, params), check_rows(args.prompts, params)
        model = load_model(args.model, params)
        began = time.monotonic()
        with StageRun(name, params.model_dump(mode="json")) as run:
            images = sample_rows(model, rows, params, label=name)
            check_set = None  # the sampler check: check/ beside the main set, in the same atomic write
            if check:
                check_set = (check, sample_rows(model, check, params, label=f"{name} check",
                                                eta=params.sampling.check_eta))
            write_samples(args.out, rows, images, check_set)
            run.log_metrics({"images": len(rows), "check_images": len(check), "seconds": time.monotonic() - began})
            run.log_artifact(Path(args.out) / "index.jsonl")
        prompts = len({(r["task"], r["prompt"]) for r in rows})
        extra = f" (+{len(check)} with eta {params.sampling.check_eta} in check/)" if check else ""
        print(f"{name}: {len(rows)} images of {prompts} eval prompts{extra} in {(time.monotonic() - began) / 60:.1f} "
              f"min ({machine(params)}) -> {args.out}")

    run_main("sample", args, body)


if __name__ == "__main__":
    main()
