"""``tiedonnx generate``: text (or token ids) from a generation folder, printed as it comes."""

from __future__ import annotations

import argparse
import sys

from . import _flags

HELP = "Generate text from a generation folder (tiedonnx export --task generate), streaming tokens."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", help="a generation folder")
    parser.add_argument("prompt", nargs="?", default=None, help="the prompt text")
    parser.add_argument("--ids", default=None, metavar="1,2,3",
                        help="the prompt as comma-separated token ids instead of text")
    parser.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="new tokens (default: 32)")
    parser.add_argument("--sampler", choices=("greedy", "top_k", "top_p"), default=None,
                        help="default: the model's own (from the folder)")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--top-k", type=int, default=None, metavar="K")
    parser.add_argument("--top-p", type=float, default=None, metavar="P")
    parser.add_argument("--seed", type=int, default=None, help="random seed for top_k/top_p (default: 0)")
    parser.add_argument("--stop-ids", default=None, metavar="1,2",
                        help="token ids that end generation (default: the tokenizer's end token; '' for none)")
    _flags.add_provider(parser)
    parser.add_argument("--memory", choices=("auto", "fast", "lean"), default="auto",
                        help="auto: lean for fp32/fp16 folders (the tie held once in memory), fast for int8/int4")
    _flags.add_threads(parser)
    _flags.add_json(parser)


def _int_list(text: str | None, flag: str) -> list[int] | None:
    from ..errors import UsageError

    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated integers. Received: {flag} {text!r:.60}.") from None


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..generate import load_lm

    ids = _int_list(args.ids, "--ids")
    if (args.prompt is None) == (ids is None):
        raise UsageError("Give the prompt as text or as --ids, not both and not neither. "
                         'Example: tiedonnx generate DIR "Once upon a time"')
    lm = load_lm(args.folder, providers=args.provider, memory=args.memory, threads=args.threads)
    stream = not args.json

    def show(row: int, token: int, piece: str | None) -> None:
        sys.stdout.write(piece if piece is not None else f"{token} ")
        sys.stdout.flush()

    result = lm.generate(ids if ids is not None else args.prompt, max_new_tokens=args.max_new_tokens,
                         sampler=args.sampler, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, seed=args.seed, stop_token_ids=_int_list(args.stop_ids, "--stop-ids"),
                         callback=show if stream else None)
    if args.json:
        _flags.emit(result.as_dict(), as_json=True, lines=[])
        return 0
    sys.stdout.write("\n")
    print(f"[{len(result.tokens[0])} tokens, {result.finish_reasons[0]}; first token "
          f"{result.time_to_first_token_s * 1e3:.1f} ms, then {result.decode_tokens_per_s:.1f} tokens/s]",
          file=sys.stderr)
    return 0
