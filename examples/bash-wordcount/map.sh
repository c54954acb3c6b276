#!/bin/sh
# Map: one "word<TAB>1" line per word of stdin (lower-cased letters only).
tr -cs 'A-Za-z' '\n' | tr 'A-Z' 'a-z' | awk 'NF { print $0 "\t1"; n++ } END { print "reporter:counter:wordcount,words," n + 0 > "/dev/stderr" }'
