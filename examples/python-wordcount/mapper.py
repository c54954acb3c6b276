#!/usr/bin/env python3
"""Map: one "word<TAB>1" line per word of stdin (lower-cased letters only)."""

import re
import sys

words = 0
for line in sys.stdin.buffer:
    for word in re.findall(rb"[A-Za-z]+", line):
        sys.stdout.buffer.write(word.lower() + b"\t1\n")
        words += 1
print(f"reporter:counter:wordcount,words,{words}", file=sys.stderr)
