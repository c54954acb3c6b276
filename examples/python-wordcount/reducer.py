#!/usr/bin/env python3
"""Reduce: sum the counts of each word; input is sorted, so equal words are adjacent."""

import sys

current, total = None, 0
for line in sys.stdin.buffer:
    word, _, count = line.rstrip(b"\n").partition(b"\t")
    if word != current:
        if current is not None:
            sys.stdout.buffer.write(current + b"\t" + str(total).encode() + b"\n")
        current, total = word, 0
    total += int(count or 0)
if current is not None:
    sys.stdout.buffer.write(current + b"\t" + str(total).encode() + b"\n")
