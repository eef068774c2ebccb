"""Summarizes tests/interop/side_by_side.sh output: per runner, file and thread count, the median
and range of prompt and decode tokens/s and the range of decode's share of the read bandwidth;
then, per thread count, decode of our q4-head files (T2 and TL layouts) over the faster of
llama.cpp's two head-matched files within each interleaved block. Standard library only."""
import collections
import json
import statistics
import sys


def spread(v):
    if len(v) == 1:
        return f"{v[0]:.1f}"
    return f"{statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})"


def main(paths):
    runs = collections.defaultdict(list)  # (runner, file, threads) -> [report]
    order = []  # (path, runner, file, threads, report) in run order
    for path in paths:
        for line in open(path):
            parts = line.split(" ", 3)
            if len(parts) < 4:
                continue
            try:
                report = json.loads(parts[3])
            except ValueError:
                continue
            runs[tuple(parts[:3])].append(report)
            order.append((path, *parts[:3], report))
    for key, reports in sorted(runs.items()):
        prompt = [r["prompt_tokens_per_s"] for r in reports]
        decode = [r["decode_tokens_per_s"] for r in reports]
        share = [r["decode_share_of_bandwidth"] for r in reports if "decode_share_of_bandwidth" in r]
        line = f"{' '.join(key)}: n={len(reports)} prompt {spread(prompt)} decode {spread(decode)}"
        if share:
            line += f" share {100 * min(share):.0f}-{100 * max(share):.0f}%"
        print(line)
    for threads in ("t1", "t2"):
        blocks = collections.defaultdict(lambda: collections.defaultdict(list))
        for path, runner, name, t, report in order:
            if t == threads:
                blocks[path][name].append(report["decode_tokens_per_s"])
        for mine in ("b2b4t-silu-q4", "b2b4t-silu-q4-tl"):
            ratios = []
            for by_file in blocks.values():
                ours, q4e, q6k = by_file[mine], by_file["tq2_0-q4e"], by_file["tq2_0-q"]
                ratios += [o / max(a, b) for o, a, b in zip(ours, q4e, q6k)]
            if ratios:
                print(f"decode {mine} vs faster llama.cpp, {threads}: median "
                      f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}, "
                      f"{len(ratios)} blocks)")


if __name__ == "__main__":
    main(sys.argv[1:])
