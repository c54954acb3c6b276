#!/bin/sh
# Reduce (and combine): sum the counts of each word; input is sorted, so equal words are adjacent.
# The key is compared as a string (`$1 ""`): some awks read words such as "inf" as numbers.
awk -F '\t' '{ key = $1 "" } key != word { if (NR > 1) print word "\t" sum; word = key; sum = 0 } { sum += $2 } END { if (NR > 0) print word "\t" sum }'
