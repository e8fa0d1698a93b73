"""glibc's getopt_long as a qemu-img subcommand calls it: options in order, the other words after them.

The words are taken as glibc 2.36 takes them (posix/getopt.c in its default PERMUTE ordering): options and
other words may come in any order (glibc moves the others to the end, block by block, as it goes), ``--``
ends the options, a long option may be abbreviated to a prefix that names one option (or several that
would all return the same), short options may be bundled (``-Uf qcow2``, ``-fqcow2``). The words are
permuted for real, because qemu-img names the word in its messages as ``argv[optind - 1]``: after an
unknown letter in the middle of a bundle that is the word *before* it (``qemu-img info -xU f`` says
``unrecognized option 'info'``).

With an option string starting with ``:`` (most qemu-img subcommands) glibc prints nothing and returns
``:`` for a missing argument; without it (``measure``) it prints its own line, which
:class:`GetoptError` carries.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

LongOpts = Mapping[str, "bool | tuple[bool, str]"]
"""Long option name -> whether it takes an argument, or (that, what getopt returns for it: ``-f`` for an
option that stands for a letter); by default ``--name``."""


class GetoptError(Exception):
    """getopt_long returned ``?`` (``code``) or ``:`` (a missing argument, with a ``:`` option string).
    ``message`` is the line glibc prints on stderr (empty when the option string starts with ``:``); ``word``
    is ``argv[optind - 1]`` at that moment, the word qemu-img names."""

    def __init__(self, message: str, code: str = "?", word: str = "") -> None:
        super().__init__(message or word)
        self.message = message
        self.code = code
        self.word = word


def getopt_long(args: list[str], shortopts: str, longopts: LongOpts, prog: str,
                positional: list[str]) -> Iterator[tuple[str, str | None]]:
    """Yield ``(option, value)`` as getopt_long returns them (``-f`` / ``--size``, or the key ``longopts``
    gives; value None for a flag). Once done, the words that are no options are appended to ``positional``
    (in glibc's permuted order). ``shortopts`` is getopt's string (``":hf:O:"``), ``prog`` is ``argv[0]``
    (the subcommand's name). Raises :class:`GetoptError` where getopt_long returns ``?`` or ``:``."""
    state = _Getopt([prog, *args], shortopts, longopts)
    while True:
        got = state.next()
        if got is None:
            positional.extend(state.argv[state.optind:])
            return
        yield got


class _Getopt:
    """_getopt_internal_r's state: the (permuted) argv, optind, the rest of a bundle, the non-options."""

    def __init__(self, argv: list[str], shortopts: str, longopts: LongOpts) -> None:
        self.argv = argv
        self.optind = 1
        self.nextchar = ""
        self.first_nonopt = self.last_nonopt = 1
        self.optstring = shortopts
        self.print_errors = not shortopts.startswith(":")
        self.longopts = longopts

    def _spec(self, name: str) -> tuple[bool, str]:
        """Long option ``name``'s (takes an argument, what getopt returns)."""
        spec = self.longopts[name]
        return (spec, f"--{name}") if isinstance(spec, bool) else spec

    def _fail(self, message: str, code: str = "?") -> GetoptError:
        word = self.argv[self.optind - 1] if self.optind >= 1 else ""
        return GetoptError(f"{self.argv[0]}: {message}" if self.print_errors else "", code, word)

    def _exchange(self) -> None:
        """Move the options met since the last block of non-options before that block."""
        bottom, middle, top = self.first_nonopt, self.last_nonopt, self.optind
        self.argv[bottom:top] = self.argv[middle:top] + self.argv[bottom:middle]
        self.first_nonopt += top - middle
        self.last_nonopt = top

    def _nonoption(self, word: str) -> bool:
        return not word.startswith("-") or word == "-"

    def next(self) -> tuple[str, str | None] | None:
        argv, argc = self.argv, len(self.argv)
        if not self.nextchar:
            self.last_nonopt = min(self.last_nonopt, self.optind)
            self.first_nonopt = min(self.first_nonopt, self.optind)
            if self.first_nonopt != self.last_nonopt and self.last_nonopt != self.optind:
                self._exchange()
            elif self.last_nonopt != self.optind:
                self.first_nonopt = self.optind
            while self.optind < argc and self._nonoption(argv[self.optind]):
                self.optind += 1
            self.last_nonopt = self.optind
            if self.optind != argc and argv[self.optind] == "--":
                self.optind += 1
                if self.first_nonopt != self.last_nonopt and self.last_nonopt != self.optind:
                    self._exchange()
                elif self.first_nonopt == self.last_nonopt:
                    self.first_nonopt = self.optind
                self.last_nonopt = argc
                self.optind = argc
            if self.optind == argc:
                if self.first_nonopt != self.last_nonopt:
                    self.optind = self.first_nonopt
                return None
            word = argv[self.optind]
            if word.startswith("--"):
                return self._long(word[2:])
            self.nextchar = word[1:]
        return self._short()

    def _short(self) -> tuple[str, str | None]:
        letter, self.nextchar = self.nextchar[0], self.nextchar[1:]
        at = self.optstring.find(letter)
        if not self.nextchar:
            self.optind += 1
        if at < 0 or letter in ":;":
            raise self._fail(f"invalid option -- '{letter}'")
        if self.optstring[at + 1:at + 2] != ":":
            return "-" + letter, None
        if self.nextchar:
            value, self.nextchar = self.nextchar, ""
            self.optind += 1
            return "-" + letter, value
        if self.optind == len(self.argv):
            raise self._fail(f"option requires an argument -- '{letter}'", "?" if self.print_errors else ":")
        self.optind += 1
        return "-" + letter, self.argv[self.optind - 1]

    def _long(self, text: str) -> tuple[str, str | None]:
        name, eq, value = text.partition("=")
        found = self._spec(name) if name in self.longopts else None
        full = name
        if found is None:  # an abbreviation: the first option it begins, unless another differs from it
            matches = [opt for opt in self.longopts if opt.startswith(name)]
            if matches:
                full, found = matches[0], self._spec(matches[0])
                ambiguous = [opt for opt in matches if opt == full or self._spec(opt) != found]
                if len(ambiguous) > 1:
                    self.optind += 1
                    raise self._fail(f"option '--{text}' is ambiguous; possibilities:"
                                     + "".join(f" '--{opt}'" for opt in ambiguous))
        self.optind += 1
        if found is None:
            raise self._fail(f"unrecognized option '--{text}'")
        has_arg, key = found
        if eq:
            if not has_arg:
                raise self._fail(f"option '--{full}' doesn't allow an argument")
            return key, value
        if not has_arg:
            return key, None
        if self.optind < len(self.argv):
            self.optind += 1
            return key, self.argv[self.optind - 1]
        raise self._fail(f"option '--{full}' requires an argument", "?" if self.print_errors else ":")
