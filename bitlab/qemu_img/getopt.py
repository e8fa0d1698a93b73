"""glibc's getopt_long as a qemu-img subcommand calls it: options in order, the other words after them.

Options and the words between them may come in any order (glibc permutes them); ``--`` ends the options.
A long option may be abbreviated to any prefix that names one option. What glibc prints for a word it
cannot take (``measure: invalid option -- 'x'``) is :class:`GetoptError`'s message.
"""

from __future__ import annotations

from collections.abc import Iterator


class GetoptError(Exception):
    """An option getopt_long does not take: ``message`` is the line glibc prints on stderr (``?``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def getopt_long(args: list[str], shortopts: str, longopts: dict[str, bool], prog: str,
                positional: list[str]) -> Iterator[tuple[str, str | None]]:
    """Yield ``(option, value)`` as getopt_long returns them (``-f`` / ``--size``; value None for a flag);
    the words that are no options are appended to ``positional``. ``shortopts`` is getopt's string
    (``"hf:O:"``), ``longopts`` maps each long name to whether it takes an argument. Raises
    :class:`GetoptError` where getopt_long returns ``?``."""
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            positional.extend(args[i:])
            return
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            full = _long_name(name, arg, longopts, prog)
            if longopts[full]:
                if not eq:
                    if i >= len(args):
                        raise GetoptError(f"{prog}: option '--{full}' requires an argument")
                    value, i = args[i], i + 1
                yield "--" + full, value
            elif eq:
                raise GetoptError(f"{prog}: option '--{full}' doesn't allow an argument")
            else:
                yield "--" + full, None
        elif arg.startswith("-") and len(arg) > 1:
            j = 1
            while j < len(arg):
                letter = arg[j]
                at = shortopts.find(letter)
                if letter == ":" or at < 0:
                    raise GetoptError(f"{prog}: invalid option -- '{letter}'")
                if shortopts[at + 1:at + 2] == ":":
                    if j + 1 < len(arg):
                        yield "-" + letter, arg[j + 1:]
                    elif i < len(args):
                        yield "-" + letter, args[i]
                        i += 1
                    else:
                        raise GetoptError(f"{prog}: option requires an argument -- '{letter}'")
                    break
                yield "-" + letter, None
                j += 1
        else:
            positional.append(arg)


def _long_name(name: str, arg: str, longopts: dict[str, bool], prog: str) -> str:
    """The long option ``name`` names: itself, or the one option it is a prefix of."""
    if name in longopts:
        return name
    matches = [opt for opt in longopts if opt.startswith(name)]
    if not matches:
        raise GetoptError(f"{prog}: unrecognized option '{arg}'")
    if len(matches) > 1:
        raise GetoptError(f"{prog}: option '{arg}' is ambiguous; possibilities:"
                          + "".join(f" '--{opt}'" for opt in matches))
    return matches[0]
