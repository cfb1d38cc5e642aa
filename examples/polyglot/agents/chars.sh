#!/bin/sh
# Counts the characters of `text`, without a JSON parser: the text is the
# value of the one field this agent reads, so python-free shells can use
# `sed` to pull it out. Prints {"char_count": N}.
input=$(cat)
text=$(printf '%s' "$input" | sed -e 's/.*"text":"\(.*\)"}}.*/\1/')
count=$(printf '%s' "$text" | wc -c | tr -d ' ')
echo "counted $count characters" >&2
printf '{"char_count": %s}\n' "$count"
