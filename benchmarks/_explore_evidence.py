import json, sys
import numpy as np
for f in sys.argv[1:]:
    d = json.load(open(f)); R = [r for r in d["records"] if r["mode"] == "model"]
    print(f, len(R), "NCC right-first", np.mean([r["ok"] for r in R]).round(3))
    for n in next(iter(R))["log_evidence"]:
        ok = [max(r["log_evidence"][n], key=r["log_evidence"][n].get) == r["right"] for r in R]
        bycase = {}
        for r, o in zip(R, ok):
            bycase.setdefault(r["row"], []).append(o)
        print(f"  n_eff {n:>5}: {np.mean(ok):.3f}  ", {k: f"{np.mean(v):.2f}" for k, v in bycase.items()})
    bycase = {}
    for r in R:
        bycase.setdefault(r["row"], []).append(r["ok"])
    print("  NCC by case", {k: f"{np.mean(v):.2f}" for k, v in bycase.items()})
    from collections import Counter
    print("  wrong firsts (NCC):", Counter(r["first"] for r in R if not r["ok"]))
