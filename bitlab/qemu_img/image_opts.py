"""``--image-opts``: an image named by block options (``driver=qcow2,file.filename=x``) instead of a file name.

qemu-img parses the string as QemuOpts with the implied option ``file`` (qemu_opts_parse_noisily on its
"source" list: ``,,`` is a comma, a later key wins, a first word without ``=`` is ``file``'s value and a later
one a flag), and bdrv_open takes the result as options. bitlab opens the image its ``driver`` and
``file.filename`` name (``file.driver`` may only be ``file``), with bdrv_open's texts for the ways the
options fail to name one; any other option is refused as not simulated. An error opening the image names
the whole string, as img_open_opts reports it (``Could not open 'driver=qcow2,file.filename=x': ...``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ._common import QemuImgError, check_driver

SIMULATED_KEYS = ("driver", "file", "file.driver", "file.filename")


def parse(optstr: str) -> dict[str, str]:
    """QemuOpts' reading of ``optstr`` (implied name ``file``) as bdrv_open gets it: key -> value, the last
    of a repeated key winning."""
    opts: dict[str, str] = {}
    i, first = 0, True
    while i < len(optstr):
        end = i
        while end < len(optstr) and optstr[end] not in "=,":
            end += 1
        if end < len(optstr) and optstr[end] == "=":
            name, i = optstr[i:end], end + 1
        elif first:
            name = "file"
        else:  # a flag ("foo" is foo=on, "nofoo" foo=off): never an option bitlab simulates
            raise _not_simulated(optstr[i:end])
        value, i = _value(optstr, i)
        opts[name] = value
        first = False
    return opts


def _value(text: str, i: int) -> tuple[str, int]:
    """get_opt_value: up to the next single comma (``,,`` is a comma); the index after that comma."""
    out = []
    while i < len(text):
        if text[i] == ",":
            if text[i + 1:i + 2] != ",":
                return "".join(out), i + 1
            i += 1
        out.append(text[i])
        i += 1
    return "".join(out), i


def _not_simulated(key: str) -> QemuImgError:
    return QemuImgError(f"qemu-img: bitlab does not simulate the --image-opts option '{key}'\n")


def resolve(optstr: str) -> tuple[str, str | None]:
    """The file name and format (None: probed) ``optstr`` opens, or bdrv_open's error for it."""
    opts = parse(optstr)

    def fail(reason: str) -> QemuImgError:
        return QemuImgError(f"qemu-img: Could not open '{optstr}': {reason}\n")

    file_opts = [key for key in opts if key.startswith("file.")]
    driver = opts.get("driver")
    if driver is None and "file" not in opts and not file_opts:
        raise fail("Must specify either driver or file")
    if driver is not None:
        if driver not in ("qcow2", "raw"):
            check_driver(optstr, driver)  # Unknown driver '...', or a format bitlab does not simulate
        # (driver=file names the file itself: a protocol driver at the top, not simulated)
    if "file" in opts:
        if file_opts:
            raise fail("Cannot reference an existing block device with additional options or a new filename")
        raise fail(f"Cannot find device='{opts['file']}' nor node-name='{opts['file']}'")
    others = [key for key in opts if key not in SIMULATED_KEYS]
    if not file_opts and set(others) <= {"filename"}:  # (a format driver takes no file name of its own)
        raise fail('A block device must be specified for "file"')
    if others:
        raise _not_simulated(others[0])
    if opts.get("file.driver", "file") != "file":
        raise _not_simulated(f"file.driver={opts['file.driver']}")
    filename = opts.get("file.filename", "")
    if not filename:
        raise fail("The 'file' block driver requires a file name")
    if filename.startswith("file:"):  # the option is the name itself: no protocol prefix is stripped
        raise fail(f"Could not open '{filename}': No such file or directory")
    return filename, driver


def image_args(opts: dict[str, str], name: str) -> tuple[str, str | None, str | None]:
    """(file name, format, the --image-opts string or None) of a subcommand's image argument ``name``:
    with ``--image-opts`` the options it names (``-f`` is refused, as img_open refuses it)."""
    if "--image-opts" not in opts:
        return name, opts.get("-f"), None
    if "-f" in opts:
        raise QemuImgError("qemu-img: --image-opts and --format are mutually exclusive\n")
    filename, fmt = resolve(name)
    return filename, fmt, name


@contextmanager
def named_by(optstr: str | None, filename: str) -> Iterator[None]:
    """Errors opening ``filename`` name the --image-opts string ``optstr`` instead (img_open_opts)."""
    try:
        yield
    except QemuImgError as err:
        prefix = f"qemu-img: Could not open '{filename}': "
        if optstr is None or not err.stderr.startswith(prefix):
            raise
        raise QemuImgError(f"qemu-img: Could not open '{optstr}': {err.stderr[len(prefix):]}",
                           err.returncode, err.stdout) from None
