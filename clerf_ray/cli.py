"""The ``clerf`` command line.

Each subcommand is a function decorated with :func:`command`, which names it and declares its
arguments; ``main`` builds the parser from the registry. To add a subcommand, write::

    @command("evaluate", help="...", args=[arg("--model", required=True), ...])
    def _evaluate(ns: argparse.Namespace) -> int:
        ...

Keep the logic in the library and only wire arguments to it here.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class _Arg:
    flags: tuple[str, ...]
    kwargs: dict


def arg(*flags: str, **kwargs) -> _Arg:
    """One ``add_argument`` call, recorded for a subcommand."""
    return _Arg(flags, kwargs)


@dataclass
class _Command:
    name: str
    help: str
    run: Callable[[argparse.Namespace], int | None]
    args: list[_Arg] = field(default_factory=list)


_COMMANDS: dict[str, _Command] = {}


def command(name: str, help: str, args: Sequence[_Arg] = ()):
    """Register the decorated ``run(namespace) -> exit code`` as subcommand ``name``."""

    def deco(fn):
        if name in _COMMANDS:
            raise ValueError(f"clerf subcommand {name!r} registered twice")
        _COMMANDS[name] = _Command(name, help, fn, list(args))
        return fn

    return deco


def _parse_option(text: str) -> tuple[str, object]:
    """``key=value`` with the value read as a Python literal when it is one (else a string)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--option expects key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


@command(
    "render",
    help="render a contact sheet: identities (rows) by poses (columns)",
    args=[
        arg("--renderer", default="procedural", help="registered renderer name"),
        arg("--n", type=int, default=8, help="number of identities (rows)"),
        arg(
            "--first-id",
            type=int,
            default=0,
            help="first identity seed; rows use consecutive seeds",
        ),
        arg("--image-size", type=int, default=96, help="cell size in pixels"),
        arg("--out", default="contact_sheet.png", help="output PNG path"),
        arg("--colors", type=int, default=None, help="store a palette PNG with this many colours"),
        arg(
            "--option",
            type=_parse_option,
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="extra renderer option (repeatable), e.g. --option lighting='frontal'",
        ),
    ],
)
def _render(ns: argparse.Namespace) -> int:
    from clerf_ray.render import make_renderer
    from clerf_ray.render.contact_sheet import make_contact_sheet, save_contact_sheet

    if ns.n < 1:
        raise SystemExit(f"clerf render: --n must be >= 1, got {ns.n}")
    renderer = make_renderer(ns.renderer, image_size=ns.image_size, **dict(ns.option))
    sheet = make_contact_sheet(renderer, range(ns.first_id, ns.first_id + ns.n))
    out = save_contact_sheet(sheet, ns.out, colors=ns.colors)
    print(f"wrote {out} ({sheet.width}x{sheet.height} px, {ns.n} identities)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clerf", description="CLERF head pose estimation on Ray")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in _COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        for a in cmd.args:
            p.add_argument(*a.flags, **a.kwargs)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    return int(ns._run(ns) or 0)


if __name__ == "__main__":
    sys.exit(main())
