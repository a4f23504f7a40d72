"""The ``trainwatch`` console command."""

from __future__ import annotations

import argparse
import sys


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainwatch", description=(
        "Watch neural-network training and say, early and precisely, when something is wrong."))
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a numpy network on the bundled digits, every "
                                       "monitor on, and write TensorBoard logs")
    demo.add_argument("--logdir", default="runs/demo", help="log folder (default runs/demo)")
    demo.add_argument("--model", choices=("mlp", "cnn"), default="cnn",
                      help="network (default cnn)")
    demo.add_argument("--epochs", type=_positive_int, default=20, help="epochs (default 20)")
    demo.add_argument("--lr", type=_positive_float, default=0.05,
                      help="learning rate of SGD with momentum 0.9 (default 0.05)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from trainwatch.demo import run_demo, tensorboard_command

        result = run_demo(logdir=args.logdir, model=args.model, epochs=args.epochs, lr=args.lr,
                          seed=args.seed, progress=not args.no_progress)
        print(f"\ntrainwatch demo: {args.model}, {args.epochs} epochs in {result.seconds:.1f} s, "
              f"validation accuracy {result.val_accuracy:.3f}")
        print(result.trainer.monitor.summary())
        print(f"logs and alerts.jsonl in {result.logdir}; open them with:\n"
              f"  {tensorboard_command(result.logdir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
