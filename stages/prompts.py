"""Stage `prompts`: write the prompt corpora per task with train/eval splits."""
from __future__ import annotations

from pathlib import Path

from stages._cli import parser, run_main


def main(argv: list[str] | None = None) -> None:
    p = parser("prompts", __doc__)
    p.add_argument("--out", default="data/prompts", help="output folder")
    args = p.parse_args(argv)

    def body(params) -> None:
        from pipeline.io import atomic_path, write_json, write_jsonl
        from pipeline.corpora import CORPORA
        from pipeline.outputs import Output, check_outputs
        from pipeline.prompts import MANIFEST, build_corpus, check_no_leak
        from pipeline.tracking import StageRun

        check_outputs("prompts", [Output("--out", args.out, folder=True, marker=MANIFEST)], {"--params": args.params})

        with StageRun("prompts", params.model_dump(mode="json")) as run:
            with atomic_path(Path(args.out), directory=True) as out:
                manifest = {}
                for task in CORPORA:
                    corpus = build_corpus(task, params.prompts, params.seed)
                    if corpus.disjoint:
                        check_no_leak(corpus.train, corpus.eval, f"{args.out}/{task}")
                    write_jsonl(out / f"{task}.train.jsonl", corpus.train)
                    write_jsonl(out / f"{task}.eval.jsonl", corpus.eval)
                    manifest[task] = {"train": len(corpus.train), "eval": len(corpus.eval),
                                      "eval_unseen": sum(r["unseen"] for r in corpus.eval), "disjoint": corpus.disjoint}
                write_json(out / MANIFEST, manifest)
            run.log_metrics({f"{task}.{k}": v for task, counts in manifest.items() for k, v in counts.items()})
            run.log_artifact(Path(args.out) / MANIFEST)
        corpora = ", ".join(f"{task} {m['train']}/{m['eval']}{'' if m['disjoint'] else ' (shared)'}"
                            for task, m in manifest.items())
        unseen = sum(m["eval_unseen"] for m in manifest.values())
        print(f"prompts: train/eval prompts per corpus: {corpora}; {unseen} eval prompts hold colour-shape pairs no "
              f"train prompt has; (shared): eval prompts may be train prompts -> {args.out}")

    run_main("prompts", args, body)


if __name__ == "__main__":
    main()
