"""One class per stage output folder, naming its files (embed, dedup, mine, score, report).

Each stage module here owns its folder class: ``folders.dedup.DedupFolder`` and so on.
"""
