"""`bpiml review export | import | page | undo`: the review loop around a pseudo store (docs/review.md)."""

from __future__ import annotations

import argparse
import getpass
import sys
import textwrap

from bpiml.config import HelpFormatter
from bpiml.pseudolabel import reviews
from bpiml.review import export, importer, page
from bpiml.review import records as review_records


def undo(store: str, ids: list[str], by: str) -> list[str]:
    """Return records to their pseudo masks: one `undone` decision each, newer than any before it."""
    opened, records = review_records.load(store)
    known = {str(r["id"]): r for r in records}
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise ValueError(f"no record(s) {unknown} in {opened.root}; nothing was undone")
    at = reviews.utc_iso()
    return [reviews.write_decision(opened.root, {"id": i, "status": "undone", "by": by, "at": at, "source": "undo",
                                                 "annotation": None, "fingerprint": known[i].get("fingerprint"),
                                                 "reviewed_mask": None}) for i in ids]


def _undo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="pseudo-labeled store")
    parser.add_argument("--id", dest="ids", action="append", required=True, help="record id (repeatable)")
    parser.add_argument("--by", default="", help="who undoes it (default: the login name)")


def _run_undo(args: argparse.Namespace) -> int:
    written = undo(args.store, args.ids, args.by or getpass.getuser())
    print(f"undone: {', '.join(args.ids)} ({len(written)} decision(s) written); they train on their pseudo masks")
    return 0


SUBCOMMANDS = {
    "export": (export, "least confident pseudo masks -> Label Studio tasks + labeling config"),
    "import": (importer, "Label Studio JSON export -> review decisions in the pseudo store"),
    "page": (page, "static HTML review page, least confident first"),
}


def cli_review(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bpiml review", formatter_class=HelpFormatter, description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{export,import,page,undo}")
    runners = {}
    for name, (module, help_) in SUBCOMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=help_, description=module.__doc__, formatter_class=HelpFormatter))
        runners[name] = module.run
    _undo_arguments(sub.add_parser("undo", help="undo the review of records (they train on their pseudo masks)",
                                   formatter_class=HelpFormatter))
    runners["undo"] = _run_undo
    parser.epilog = "\n".join(f"bpiml review {name}:\n" + textwrap.indent(command.format_help(), "    ")
                               for name, command in sub.choices.items())
    args = parser.parse_args(argv)
    try:
        return runners[args.command](args)
    except (ValueError, FileNotFoundError) as err:
        print(f"bpiml review {args.command}: {err}", file=sys.stderr)
        return 2
