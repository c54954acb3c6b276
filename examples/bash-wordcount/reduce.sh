#!/bin/sh
# Reduce (and combine): sum the counts of each word; input is sorted, so equal words are adjacent.
awk -F '\t' '$1 != word { if (NR > 1) print word "\t" sum; word = $1; sum = 0 } { sum += $2 } END { if (NR > 0) print word "\t" sum }'
