#!/usr/bin/env python3
"""Generates the large allot configs of the server benchmark suite (JSON on stdout).

    scripts/gen-config.py experiments [N]   N experiments (default 10,000): layers of 20
                                            experiments of 500 buckets each, two cells, one
                                            bool flag per layer, every fourth experiment with a
                                            country condition
    scripts/gen-config.py flags             100 bool flags: 5 layers x 5 experiments driving
                                            2 flags each, 25 salted rollouts (every fifth
                                            behind a platform rule), 25 rule-only flags

Both have the shape of the engine benches' configs (benches/benches/engine.rs,
`ten_thousand_experiments` and `hundred_flags`), so server-level numbers can be set beside the
engine's. Every flag evaluates without error for a context with a `targetingKey`.
"""
import json
import sys


def bool_flag(key):
    return {"key": key, "type": "bool", "variants": {"on": True, "off": False}, "default": "off"}


def experiments(n):
    if n % 20:
        sys.exit("the experiment count must be a multiple of 20")
    layers, exps, flags = [], [], []
    for l in range(n // 20):
        layer, flag = f"layer-{l:03}", f"layer-{l:03}.flag"
        layers.append({"id": layer})
        flags.append(bool_flag(flag))
        for e in range(20):
            exp = {
                "id": f"layer-{l:03}-experiment-{e:02}",
                "layer": layer,
                "ranges": [f"{e * 500}..{(e + 1) * 500}"],
                "cells": [
                    {"id": "control", "weight": 1, "flags": {flag: "off"}},
                    {"id": "treatment", "weight": 1, "flags": {flag: "on"}},
                ],
            }
            if e % 4 == 0:
                exp["when"] = {"country": {"in": ["SE", "NO", "DK", "FI", "US"]}}
            exps.append(exp)
    return {"layers": layers, "experiments": exps, "flags": flags}


def hundred_flags():
    layers, exps, flags = [], [], []
    for l in range(5):
        layers.append({"id": f"surface-{l}"})
        for e in range(5):
            keys = [f"s{l}.feature-{e}a", f"s{l}.feature-{e}b"]
            exps.append({
                "id": f"surface-{l}-test-{e}",
                "layer": f"surface-{l}",
                "ranges": [f"{e * 2000}..{(e + 1) * 2000}"],
                "cells": [
                    {"id": "control", "flags": {k: "off" for k in keys}},
                    {"id": "treatment", "flags": {k: "on" for k in keys}},
                ],
            })
            flags.extend(bool_flag(k) for k in keys)
    for r in range(25):
        flag = bool_flag(f"rollout.feature-{r}")
        on = 4 * r
        rule = {"rollout": {"split": [{"variant": "on", "weight": on},
                                      {"variant": "off", "weight": 100 - on}]}}
        if r % 5 == 0:
            rule["when"] = {"platform": {"in": ["ios", "android"]}}
        flag["rules"] = [rule]
        flags.append(flag)
    whens = [
        {"country": "SE"},
        {"country": "SE"},
        {"country": {"in": ["SE", "NO", "DK", "FI"]}},
        {"plan": {"eq": "pro"}},
        {"app_version": {"semver_ge": "5.3.0"}},
    ]
    for t in range(25):
        flag = bool_flag(f"rule.feature-{t}")
        flag["rules"] = [{"when": whens[t % 5], "variant": "on"}]
        flags.append(flag)
    assert len(flags) == 100
    return {"layers": layers, "experiments": exps, "flags": flags}


def main(argv):
    if len(argv) >= 2 and argv[1] == "experiments":
        doc = experiments(int(argv[2]) if len(argv) > 2 else 10_000)
    elif len(argv) == 2 and argv[1] == "flags":
        doc = hundred_flags()
    else:
        sys.exit(__doc__)
    json.dump(doc, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv)
