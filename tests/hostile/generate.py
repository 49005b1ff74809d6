"""Hostile inbox entries by class, for tests/hostile and bench/hostile.py.

A tiny digits workspace (random encoder and head: no training, no ../shared) holds one
genuine report; each class writes its entries beside it and returns what must become of
each file: the documented code it is rejected with, QUARANTINED (a special file moved out
before anything reads it) or VALID (well-formed: validation accepts it). `variant` varies
the details, so the bench can run a few hundred distinct cases.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image, PngImagePlugin

from mudjack.data import LabelledSet, Task, load_digits_images, save_task
from mudjack.deployed import Deployed
from mudjack.encoders import get_adapter, save_encoder
from mudjack.heads import Head, save_head
from mudjack.io import write_npz

QUARANTINED = "quarantined"
VALID = "valid"
GENUINE = "genuine-1.json"
SHAPE = (8, 8, 3)
ADAPTER = {"input_shape": list(SHAPE), "width": 4, "feature_dim": 8, "mean": [0.5] * 3, "std": [0.25] * 3}
# What intake may answer for a VALID report: it passes the schema, then the model decides.
MODEL_CODES = {None, "not_reproduced", "not_backdoor", "no_reference"}


@dataclass
class Workspace:
    root: Path        # the project folder, where the stages run
    outside: Path     # beside it (inside the sentinel folder): targets that must stay untouched
    image: np.ndarray  # the genuine report's input
    label: int

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"


def build_workspace(folder: Path) -> Workspace:
    """`folder`/ws (params.yaml, data, a random encoder and head, an inbox with the genuine
    report) and `folder`/outside (files that links and `..` names point at)."""
    root, outside = folder / "ws", folder / "outside"
    outside.mkdir(parents=True)
    data = load_digits_images()
    task = Task("digits", list(range(10)), _subset(data, 0, 200), _subset(data, 200, 400))
    paths = {"shadow": "data/shadow.npz", "tasks": "data/tasks", "inbox": "inbox",
             "encoder": "models/deployed/encoder.safetensors", "heads": "models/deployed", "truth": ""}
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump({"seed": 0, "threads": 1, "paths": paths}))
    write_npz(root / paths["shadow"], x=data.x[400:700])
    save_task(task, root / paths["tasks"] / "digits")
    torch.manual_seed(0)
    adapter = get_adapter("small_cnn", ADAPTER)
    encoder, head = adapter.build(), Head(ADAPTER["feature_dim"], 10, hidden=[], dropout=0.0)
    save_encoder(encoder, adapter, root / paths["encoder"])
    save_head(head, root / paths["heads"] / "digits" / "head.safetensors")
    image = task.test.x[0]
    # the label the model gives: a report that does not reproduce, decided in milliseconds
    label = int(Deployed(encoder, adapter, {"digits": head}).classify("digits", image[None])[0])
    ws = Workspace(root, outside, image, label)
    ws.inbox.mkdir()
    png(ws.inbox / "genuine-1.png", image)
    report(ws.inbox, "genuine-1", {"label": label, "input": "genuine-1.png"})
    png(outside / "secret.png", image)
    return ws


def init_dvc(root: Path) -> None:
    """Make `root` a DVC project (no git): `mudjack submit` asks DVC which stage writes the inbox."""
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    (root / "dvc.yaml").write_text("stages: {}\n")


def _subset(data: LabelledSet, start: int, stop: int) -> LabelledSet:
    return LabelledSet(data.x[start:stop], data.y[start:stop])


def png(path: Path, image: np.ndarray, **options: object) -> None:
    Image.fromarray(image).save(path, format="PNG", **options)


def report(inbox: Path, name: str, fields: dict[str, object], *, file: str | None = None) -> str:
    """`<file or name>.json` with the genuine defaults for `name`; returns the file name."""
    body = {"id": name, "task": "digits", "label": 1, "input": f"{name}.png", **fields}
    file = file or f"{name}.json"
    (inbox / file).write_text(json.dumps(body))
    return file


def _valid_input(ws: Workspace, name: str, variant: int) -> str:
    """A PNG of another test image under `name`.png (so it is not the genuine's input)."""
    png(ws.inbox / f"{name}.png", np.roll(ws.image, shift(variant), axis=1))
    return f"{name}.png"


def shift(variant: int) -> int:
    """A roll of 1 to 7 pixels: never the whole width (8), which would give the genuine input."""
    return variant % 7 + 1


# --------------------------------------------------------------------------- classes

Case = Callable[[Workspace, str, int], dict[str, str]]


def deep_json(ws: Workspace, tag: str, variant: int) -> dict[str, str]:
    depth = 10_000 + 50 * variant  # under the 64 KiB limit, so the depth is what is refused
    opener, closer = ("[", "]") if variant % 2 else ('{"a":', "}")
    (ws.inbox / f"deep-{tag}.json").write_text(opener * depth + "1" + closer * depth)
    return {f"deep-{tag}.json": "too_deep"}


def huge_number(ws: Workspace, tag: str, variant: int) -> dict[str, str]:
    """A 5,000-digit label or prediction."""
    name = f"digits-{tag}"
    field = ("label", "predicted")[variant % 2]
    body = {"id": name, "task": "digits", "label": 1, "input": _valid_input(ws, name, variant)}
    text = json.dumps({**body, field: 0}).replace(f'"{field}": 0', f'"{field}": {"7" * (5000 + variant)}')
    (ws.inbox / f"{name}.json").write_text(text)
    return {f"{name}.json": "bad_field"}


def _make_special(path: Path, kind: int, outside: Path) -> None:
    """At `path`: a FIFO, a link to /dev/zero, a link leaving the inbox (to `outside`), a loop,
    a dangling link or a socket (kinds 0-5)."""
    if kind == 0:
        os.mkfifo(path)
    elif kind == 1:
        path.symlink_to("/dev/zero")
    elif kind == 2:
        if not outside.exists():
            outside.write_text("{}")
        path.symlink_to(outside)
    elif kind == 3:
        path.symlink_to(path.name)
    elif kind == 4:
        path.symlink_to(path.parent / "nothing-here")
    else:
        _bind_socket(path)


def special_report(ws: Workspace, tag: str, variant: int) -> dict[str, str]:
    """A report file that is a FIFO, a link to /dev/zero, a link leaving the inbox, a loop,
    a dangling link or a socket: moved out before anything opens it."""
    path = ws.inbox / f"special-{tag}.json"
    _make_special(path, variant % 6, ws.outside / f"{tag}.json")
    return {path.name: QUARANTINED}


def _bind_socket(path: Path) -> None:
    import socket

    with contextlib.chdir(path.parent), socket.socket(socket.AF_UNIX) as sock:
        sock.bind(path.name)  # relative: a deep tmp path is over AF_UNIX's 108 bytes; stays after close


def special_input(ws: Workspace, tag: str, variant: int) -> dict[str, str]:
    """A report whose input is a FIFO, a link to /dev/zero or out of the inbox, or a loop:
    the input is quarantined, so the report names a missing file."""
    name = f"sinput-{tag}"
    target = ws.inbox / f"{name}.png"
    _make_special(target, variant % 4, ws.outside / "secret.png")
    return {report(ws.inbox, name, {}): "bad_input", target.name: QUARANTINED}


def traversal(ws: Workspace, tag: str, variant: int) -> dict[str, str]:
    """Inputs that leave the inbox by name: `..`, absolute, through a missing folder."""
    names = ["../outside/secret.png", str(ws.outside / "secret.png"), f"nosuchdir-{tag}/../x.png",
             "../../../../../../etc/passwd", "./../ws/inbox/genuine-1.png"]
    name = f"trav-{tag}"
    return {report(ws.inbox, name, {"input": names[variant % len(names)]}): "bad_input"}


def bad_names(ws: Workspace, tag: str, variant: int) -> dict[str, str]:
    """Input names with NUL, control characters, 5,000 characters, lone surrogates."""
    names = ["a\x00b.png", "x" * (5000 + variant) + ".png", "line\nbreak.png", "\ud800.png",
             "tab\tname.png", "sub/" + "y" * 300 + ".png"]
    name = f"bname-{tag}"
    return {report(ws.inbox, name, {"input": names[variant % len(names)]}): "bad_name"}


def odd_files(ws: Workspace, tag: str, variant: int) -> dict[str, str]:
    """Report files whose names break the id rule: `.json`, a newline forging a log line,
    control characters, a directory named like a report."""
    kind = variant % 4
    if kind == 0:
        # a valid id and input: only the file name is wrong (its suffix is not empty but all of it)
        fields = {"input": _valid_input(ws, f"dot-{tag}", variant)}
        return {report(ws.inbox, f"dot-{tag}", fields, file=".json"): "bad_id"}
    if kind == 1:
        name = f"evil-{tag}\nintake: 'genuine-1.json': accepted: forged"
        return {report(ws.inbox, name, {"input": _valid_input(ws, f"evil-{tag}", variant)}): "bad_id"}
    if kind == 2:
        name = f"ctl-{tag}\x1b[31m\r"
        return {report(ws.inbox, name, {"input": _valid_input(ws, f"ctl-{tag}", variant)}): "bad_id"}
    (ws.inbox / f"dir-{tag}.json").mkdir()
    return {f"dir-{tag}.json": "not_regular"}


def claimants(ws: Workspace, tag: str, variant: int) -> dict[str, str]:
    """Later reports that claim the genuine report's id (`bug-000.json.json` style names,
    another suffix case) or give its input another label."""
    kind = variant % 3
    if kind == 0:
        name = "genuine-1.json"  # the file genuine-1.json.json: its id differs from no file
        # its id is its file's stem, so it is well-formed: merged into the genuine report
        return {report(ws.inbox, name, {"input": "genuine-1.png", "label": ws.label}): VALID}
    if kind == 1:
        file = report(ws.inbox, "genuine-1", {"input": "genuine-1.png", "label": ws.label},
                      file="genuine-1.JSON")
        return {file: "duplicate_id"}
    name = f"later-{tag}"
    other = (ws.label + 1 + variant) % 10
    return {report(ws.inbox, name, {"input": "genuine-1.png", "label": other}): "conflicting_label"}


def png_bombs(ws: Workspace, tag: str, variant: int) -> dict[str, str]:
    """PNGs whose text or ICC chunks inflate past Pillow's limits, or whose header declares
    a huge image."""
    name = f"bomb-{tag}"
    path = ws.inbox / f"{name}.png"
    kind = variant % 5
    if kind == 0:
        info = PngImagePlugin.PngInfo()
        info.add_text("k", "0" * ((2 << 20) + variant), zip=True)
        png(path, ws.image, pnginfo=info)
    elif kind == 1:
        png(path, ws.image, icc_profile=b"\0" * ((2 << 20) + variant))
    elif kind == 2:
        info = PngImagePlugin.PngInfo()
        for i in range(80):
            info.add_text(f"k{i}", "0" * (1000 << 10), zip=True)
        png(path, ws.image, pnginfo=info)
    else:  # a header past Pillow's bomb limit, or merely not the task's size
        big = kind == 3
        path.write_bytes(_png_header(100_000 + variant if big else 5000, 100_000 if big else 4000))
        return {report(ws.inbox, name, {}): "too_large" if big else "bad_shape"}
    return {report(ws.inbox, name, {}): "undecodable"}


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    idat = zlib.compress(b"\0" * 1000)
    data = struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    return b"\x89PNG\r\n\x1a\n" + chunk + data


def npy_headers(ws: Workspace, tag: str, variant: int) -> dict[str, str]:
    """.npy files whose header lies: a 224 GiB array, a negative or wrong-rank shape, a
    truncated body, a garbage header, a nested header, an object dtype."""
    name = f"npy-{tag}"
    kind = variant % 6
    headers = {
        0: ("{'descr': '<f8', 'fortran_order': False, 'shape': (100000, 100000, 3), }", "too_large"),
        1: ("{'descr': '<u1', 'fortran_order': False, 'shape': (8, -8, 3), }", "bad_shape"),
        2: ("{'descr': '<u1', 'fortran_order': False, 'shape': (8, 8, 3), }", "undecodable"),
        3: ("{'descr': " + "[" * 3000 + "]" * 3000 + "}", "undecodable"),
        4: ("not a header at all", "undecodable"),
        5: ("{'descr': '|O', 'fortran_order': False, 'shape': (8, 8, 3), }", "undecodable"),
    }
    header, code = headers[kind]
    (ws.inbox / f"{name}.npy").write_bytes(_npy(header, b"\0" * 10))
    return {report(ws.inbox, name, {"input": f"{name}.npy"}): code}


def _npy(header: str, body: bytes) -> bytes:
    text = header.encode("latin1")
    text += b" " * (63 - (len(text) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + body


def valid_variants(ws: Workspace, tag: str, variant: int) -> dict[str, str]:
    """Well-formed reports in unusual dress: a big-endian float .npy, a Fortran-order array,
    an upper-case `.JSON` suffix, an input in a sub-folder."""
    name = f"valid-{tag}"
    image = np.roll(ws.image, shift(variant), axis=0)
    kind = variant % 4
    if kind in (0, 1):
        array = image.astype(">f4" if kind == 0 else ">u2")
        buffer = io.BytesIO()
        np.save(buffer, np.asfortranarray(array) if variant % 8 > 3 else array)
        (ws.inbox / f"{name}.npy").write_bytes(buffer.getvalue())
        return {report(ws.inbox, name, {"input": f"{name}.npy"}): VALID}
    if kind == 2:
        png(ws.inbox / f"{name}.png", image)
        return {report(ws.inbox, name, {}, file=f"{name}.JSON"): VALID}
    (ws.inbox / f"sub-{tag}").mkdir()
    png(ws.inbox / f"sub-{tag}" / "x.png", image)
    return {report(ws.inbox, name, {"input": f"sub-{tag}/x.png"}): VALID}


def junk_reports(ws: Workspace, tag: str, variant: int) -> dict[str, str]:
    """Report files that are too big, binary, not an object, or numbers JSON cannot hold."""
    path = ws.inbox / f"junk-{tag}.json"
    kind = variant % 5
    if kind == 0:
        path.write_text(json.dumps({"id": path.stem, "note": "x" * (70 << 10)}))
        return {path.name: "too_large"}
    if kind == 1:
        path.write_bytes(os.urandom(512) + b"\xff")
        return {path.name: "unreadable"}
    if kind == 2:
        path.write_text("[1, 2, 3]")
        return {path.name: "unreadable"}
    number = {3: "1e400", 4: "NaN"}[kind]  # JSON numbers Python reads as inf and nan
    path.write_text(json.dumps({"id": path.stem, "task": "digits", "input": "x.png", "label": 0})
                    .replace('"label": 0', f'"label": {number}'))
    return {path.name: "bad_field"}


def ambiguous(ws: Workspace, tag: str, variant: int) -> dict[str, str]:
    """A report saying two things at once: a key given twice (which "label" did the client
    mean?), or an animated PNG (which frame did the classifier see?)."""
    name = f"digits-{tag}"
    if variant % 2:
        frames = [Image.fromarray(np.roll(ws.image, shift(variant + k), axis=1)) for k in range(2)]
        frames[0].save(ws.inbox / f"{name}.png", format="PNG", save_all=True, append_images=frames[1:])
        report(ws.inbox, name, {})
        return {f"{name}.json": "bad_format"}
    body = json.dumps({"id": name, "task": "digits", "label": 1, "input": _valid_input(ws, name, variant)})
    (ws.inbox / f"{name}.json").write_text(body[:-1] + ', "label": 3}')
    return {f"{name}.json": "bad_field"}


CLASSES: dict[str, Case] = {
    "deep_json": deep_json, "huge_number": huge_number, "special_report": special_report,
    "special_input": special_input, "traversal": traversal, "bad_names": bad_names,
    "odd_files": odd_files, "claimants": claimants, "png_bombs": png_bombs,
    "npy_headers": npy_headers, "valid_variants": valid_variants, "junk_reports": junk_reports,
    "ambiguous": ambiguous,
}
# How many variants of each class differ in kind (the bench runs more, with other sizes).
KINDS = {"deep_json": 2, "huge_number": 2, "special_report": 6, "special_input": 4, "traversal": 5,
         "bad_names": 6, "odd_files": 4, "claimants": 3, "png_bombs": 5, "npy_headers": 6,
         "valid_variants": 4, "junk_reports": 5, "ambiguous": 2}


def cases(repeat: int = 1) -> list[tuple[str, int]]:
    """(class, variant) for every kind of every class, `repeat` times with other details."""
    return [(name, v) for name, kinds in KINDS.items() for v in range(kinds * repeat)]


# --------------------------------------------------------------------------- `mudjack submit`

SubmitCase = Callable[[Workspace, Path, int], tuple[str, str]]


def submit_case(ws: Workspace, mail: Path, variant: int) -> tuple[str, str]:
    """A client's report in `mail` (beside the workspace) for `mudjack submit`: returns
    (the argument, the expected code or VALID). Kinds by `variant`."""
    kind = variant % len(SUBMIT_KINDS)
    name = f"c{variant}"
    mail.mkdir(parents=True, exist_ok=True)
    png(mail / f"{name}.png", np.roll(ws.image, shift(variant), axis=1))
    return SUBMIT_KINDS[kind](ws, mail, name)


def _mail_report(mail: Path, name: str, fields: dict[str, object], file: str | None = None) -> str:
    return str(mail / report(mail, name, fields, file=file))


SUBMIT_KINDS: list[Callable[[Workspace, Path, str], tuple[str, str]]] = [
    lambda ws, mail, n: (_mail_report(mail, n, {}), VALID),
    lambda ws, mail, n: (_mail_report(mail, n, {}, file=f"{n}.JSON"), VALID),
    lambda ws, mail, n: (_mail_report(mail, n, {"input": "../outside/secret.png"}), "bad_input"),
    lambda ws, mail, n: (_mail_report(mail, n, {"input": str(ws.outside / "secret.png")}), "bad_input"),
    lambda ws, mail, n: (_mail_report(mail, n, {"input": f"nosuchdir-{n}/../{n}.png"}), "bad_input"),
    lambda ws, mail, n: (_mail_report(mail, n, {"input": "../ws/params.yaml"}), "bad_input"),
    lambda ws, mail, n: (_mail_report(mail, n, {"input": "a\x00.png"}), "bad_name"),
    lambda ws, mail, n: (str(mail / ("x" * 5000 + ".json")), "bad_name"),
    lambda ws, mail, n: (str(mail / f"{n}\x00.json"), "bad_name"),
    lambda ws, mail, n: (_fifo(mail / f"{n}.json"), "not_regular"),
    lambda ws, mail, n: (_mail_report(mail, "", {"input": f"{n}.png"}, file=".json"), "bad_id"),
    lambda ws, mail, n: (_mail_report(mail, f"{n}\nrejected: forged", {"input": f"{n}.png"}), "bad_name"),
    lambda ws, mail, n: (_linked_report(mail, n), VALID),
    lambda ws, mail, n: (_mail_report(mail, n, {"input": _fifo(mail / f"{n}-fifo.png")}), "not_regular"),
    lambda ws, mail, n: (_mail_report(mail, n, {"input": _link(mail / f"{n}-l.png", "/dev/zero")}),
                         "bad_input"),
    lambda ws, mail, n: (_mail_report(mail, n, {"input": _link(mail / f"{n}-o.png", mail / f"{n}-o.png")}),
                         "symlink_loop"),
]


def _fifo(path: Path) -> str:
    os.mkfifo(path)
    return path.name if path.suffix == ".png" else str(path)


def _link(path: Path, target: str | Path) -> str:
    path.symlink_to(target)
    return path.name


def _linked_report(mail: Path, name: str) -> str:
    """A report JSON that is a symlink to one in another folder; its input beside the link."""
    real = mail / "real"
    real.mkdir(exist_ok=True)
    report(real, name, {})
    (mail / f"{name}.json").symlink_to(real / f"{name}.json")
    return str(mail / f"{name}.json")
