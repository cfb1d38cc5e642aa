"""Counts words and finds the most common ones. Reads `text`."""
import collections
import json
import sys

request = json.load(sys.stdin)
words = request["state"]["text"].lower().split()
print(f"counting {len(words)} words", file=sys.stderr)
top = collections.Counter(words).most_common(3)
json.dump({"word_count": len(words), "top_words": [w for w, _ in top]}, sys.stdout)
