# Busy time vs gaps of a CUDA-graph step from nsys' cuda_gpu_trace CSV.
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
ks = []
for r in rows:
    try:
        s = int(r["Start (ns)"]); d = int(r["Duration (ns)"])
    except (KeyError, ValueError):
        continue
    name = r.get("Name", "")
    if "memcpy" in name.lower() or "memset" in name.lower():
        continue
    ks.append((s, s + d, name))
ks.sort()
# split into steps at gaps > 200 us
steps, cur = [], [ks[0]]
for k in ks[1:]:
    if k[0] - max(e for _, e, _ in cur[-50:]) > 200_000:
        steps.append(cur); cur = [k]
    else:
        cur.append(k)
steps.append(cur)
for st in steps[-3:]:
    span = max(e for _, e, _ in st) - st[0][0]
    busy, end, gaps, big = 0, st[0][0], [], []
    for s, e, n in st:
        if s > end:
            gaps.append(s - end)
            big.append((s - end, n))
        busy += max(0, e - max(s, end))
        end = max(end, e)
    gaps.sort()
    print(f"kernels {len(st)} span {span/1e6:.3f} ms busy {busy/1e6:.3f} ms idle {sum(gaps)/1e6:.3f} ms in {len(gaps)} gaps; median gap {gaps[len(gaps)//2]/1e3 if gaps else 0:.2f} us, p90 {gaps[int(len(gaps)*.9)]/1e3 if gaps else 0:.2f} us")
    big.sort(reverse=True)
    print("  largest gaps before:", "; ".join(f"{g/1e3:.1f}us {n[:40]}" for g, n in big[:8]))
