"""Where a CUDA-graph step leaves the GPU idle, from an Nsight Systems kernel trace.

    nsys profile --cuda-graph-trace=node -t cuda -o t gpu/fmlab bench train ... --steps 3
    nsys stats -r cuda_gpu_trace -f csv -o tr t.nsys-rep
    python3 tools/nsys_gaps.py tr_cuda_gpu_trace.csv

Steps are split at gaps over 200 us (the host reads the loss between steps). For each of the last
three: kernels, span, busy time (the union of kernel intervals), idle time (no kernel running;
memsets and copies count as idle: in a graph each is followed by a gap of a few us) and the
kernels after the largest gaps.
"""
import csv
import sys


def main(path):
    ks = []
    for r in csv.DictReader(open(path)):
        try:
            s, d = int(r["Start (ns)"]), int(r["Duration (ns)"])
        except (KeyError, ValueError):
            continue
        name = r.get("Name", "")
        if "memcpy" in name.lower() or "memset" in name.lower():
            continue
        ks.append((s, s + d, name))
    ks.sort()
    steps, cur = [], [ks[0]]
    for k in ks[1:]:
        if k[0] - max(e for _, e, _ in cur[-50:]) > 200_000:
            steps.append(cur)
            cur = [k]
        else:
            cur.append(k)
    steps.append(cur)
    for st in steps[-3:]:
        span = max(e for _, e, _ in st) - st[0][0]
        busy, end, gaps = 0, st[0][0], []
        for s, e, n in st:
            if s > end:
                gaps.append((s - end, n))
            busy += max(0, e - max(s, end))
            end = max(end, e)
        g = sorted(x for x, _ in gaps)
        med = g[len(g) // 2] / 1e3 if g else 0.0
        p90 = g[int(len(g) * 0.9)] / 1e3 if g else 0.0
        print(f"kernels {len(st)} span {span / 1e6:.3f} ms busy {busy / 1e6:.3f} ms idle {sum(g) / 1e6:.3f} ms in {len(g)} gaps; median gap {med:.2f} us, p90 {p90:.2f} us")
        big = sorted(gaps, reverse=True)[:8]
        print("  largest gaps before:", "; ".join(f"{x / 1e3:.1f}us {n[:40]}" for x, n in big))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python3 tools/nsys_gaps.py TRACE_cuda_gpu_trace.csv")
    main(sys.argv[1])
