#!/usr/bin/env python3
"""Writes a dataset zip that is an annotation bomb: six small PNGs in two class folders and
one CSV of box rows that are all invalid (xmax < xmin), for probing what an upload of it
costs the server.

    python3 scripts/annotation_bomb.py /tmp/bomb.zip --csv-mib 60
    curl -s -o /tmp/answer.json -w '%{http_code} %{time_total}s\n' \
        -F archive=@/tmp/bomb.zip localhost:8080/v1/datasets

Only the standard library is used, so it runs anywhere.
"""

import argparse
import io
import struct
import zipfile
import zlib


def png(width: int, height: int, rgb: tuple) -> bytes:
    """A solid-colour RGB PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * height)) + chunk(b"IEND", b"")


def invalid_rows(target_bytes: int) -> bytes:
    """Rows naming a different image each, with a box whose xmax is below its xmin."""
    out = io.BytesIO()
    out.write(b"filename,label,xmin,ymin,xmax,ymax\n")
    i = 0
    while out.tell() < target_bytes:
        out.write(b"photo_%07d.jpg,cat,30,0,10,5\n" % i)
        i += 1
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--csv-mib", type=float, default=60.0, help="size of the CSV in MiB")
    args = parser.parse_args()
    with zipfile.ZipFile(args.out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for i in range(6):
            folder = "red" if i < 3 else "blue"
            archive.writestr(f"set/{folder}/{i}.png", png(16, 16, (40 * i, 100, 200)))
        archive.writestr("set/boxes.csv", invalid_rows(int(args.csv_mib * 1024 * 1024)))


if __name__ == "__main__":
    main()
