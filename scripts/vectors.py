#!/usr/bin/env python3
"""Golden allocation vectors for allot, from an independent implementation of the algorithm.

This file implements DESIGN §2 / docs/spec.md §2 from the text of the spec, not from the Rust
engine, so `testdata/vectors.json` is a real cross-check between two implementations:

    seed(salt)       = xxh3_64(utf8(salt))                      (seed 0)
    h(salt, unit)    = xxh3_64_with_seed(utf8(unit), seed(salt))
    scale(h, n)      = (h * n) >> 64                            (128-bit product)
    bucket           = scale(h(salt, unit), buckets)
    cell             = first i with scale(h(salt, unit), sum(w)) < w[0] + .. + w[i]

For the whole-config cases it also implements allocation (holdouts first, layers, ranges,
eligibility, cells) and flag resolution (disabled, experiment cell, rules with eq/in/exists,
rollouts, default) for the subset of conditions the cases use.

Usage:
    python3 scripts/vectors.py generate > testdata/vectors.json
    python3 scripts/vectors.py check testdata/vectors.json

Needs the `xxhash` package: pip install xxhash==4.1.0 (any version with xxh3_64_intdigest works).
Generation is deterministic: the only pseudo-randomness is a splitmix64 with a fixed seed.
"""

import json
import sys

import xxhash

MASK64 = (1 << 64) - 1
U32_MAX = (1 << 32) - 1


# --- the algorithm (DESIGN §2) ---------------------------------------------------------------


def seed(salt):
    return xxhash.xxh3_64_intdigest(salt.encode("utf-8"), seed=0)


def hash_unit(salt, unit):
    return xxhash.xxh3_64_intdigest(unit.encode("utf-8"), seed=seed(salt))


def scale(h, n):
    return (h * n) >> 64


def bucket(salt, unit, buckets):
    return scale(hash_unit(salt, unit), buckets)


def pick(salt, unit, weights):
    total = sum(weights)
    if total == 0:
        return None
    p = scale(hash_unit(salt, unit), total)
    end = 0
    for i, w in enumerate(weights):
        end += w
        if p < end:
            return i
    raise AssertionError("unreachable: p < total")


# --- whole configs (DESIGN §2-3, §5) ------------------------------------------------------------


def unit_of(ctx, key):
    """The unit named by `key`: a string of 1 to 256 UTF-8 bytes, else None (absent or invalid)."""
    v = ctx.get(key)
    if isinstance(v, str) and 1 <= len(v.encode("utf-8")) <= 256:
        return v
    return None


def is_missing(ctx, key):
    return ctx.get(key) is None


def same(a, b):
    """Equality of JSON scalars: numbers by value, no bool/number mixing."""
    num = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)
    if num(a) and num(b):
        return a == b
    return type(a) is type(b) and a == b


def holds(cond, ctx, segments):
    """The condition subset the vectors use: eq / in / exists / scalar shorthand, all/any/not."""
    if cond is None:
        return True
    for key, val in cond.items():
        if key == "all":
            ok = all(holds(c, ctx, segments) for c in val)
        elif key == "any":
            ok = any(holds(c, ctx, segments) for c in val)
        elif key == "not":
            ok = not holds(val, ctx, segments)
        elif key == "segment":
            ok = holds(segments[val], ctx, segments)
        else:
            ops = val if isinstance(val, dict) else {"eq": val}
            v = ctx.get(key)
            for op, x in ops.items():
                if op == "exists":
                    r = (v is not None) == x
                elif v is None:
                    r = False
                elif op == "eq":
                    r = same(v, x)
                elif op == "in":
                    r = any(same(v, i) for i in x)
                else:
                    raise ValueError(f"operator {op} not implemented by the vector generator")
                if not r:
                    return False
            ok = True
        if not ok:
            return False
    return True


def parse_range(text):
    a, b = text.split("..")
    return int(a), int(b)


def in_ranges(b, ranges):
    return any(s <= b < e for s, e in map(parse_range, ranges))


def held_holdouts(cfg, ctx):
    out = []
    for h in cfg.get("holdouts", []):
        unit = unit_of(ctx, h.get("unit", "targetingKey"))
        if unit is None:
            continue
        b = bucket(h.get("salt", h["id"]), unit, h.get("buckets", 10000))
        if in_ranges(b, h["ranges"]):
            out.append(h["id"])
    return out


def assign(cfg, layer, ctx):
    """(experiment, cell, bucket) of the unit in `layer`, or None."""
    unit = unit_of(ctx, layer.get("unit", "targetingKey"))
    if unit is None:
        return None
    b = bucket(layer.get("salt", layer["id"]), unit, layer.get("buckets", 10000))
    for e in cfg.get("experiments", []):
        if e["layer"] == layer["id"] and in_ranges(b, e["ranges"]):
            if not holds(e.get("when"), ctx, cfg.get("segments", {})):
                return None
            weights = [c.get("weight", 1) for c in e["cells"]]
            c = pick(e.get("salt", e["id"]), unit, weights)
            return e, e["cells"][c], b
    return None


def covered_layers(cfg, held):
    return {l for h in cfg.get("holdouts", []) if h["id"] in held for l in h["layers"]}


def allocate(cfg, ctx):
    held = held_holdouts(cfg, ctx)
    covered = covered_layers(cfg, held)
    allocations = []
    for layer in cfg["layers"]:
        if layer["id"] in covered:
            continue
        hit = assign(cfg, layer, ctx)
        if hit:
            e, c, b = hit
            allocations.append(
                {"layer": layer["id"], "experiment": e["id"], "cell": c["id"], "bucket": b}
            )
    return allocations, held


def flag_layer(cfg, key):
    for e in cfg.get("experiments", []):
        for c in e["cells"]:
            if key in c.get("flags", {}):
                return next(l for l in cfg["layers"] if l["id"] == e["layer"])
    return None


def resolve(cfg, flag, ctx):
    def answer(variant, reason, **extra):
        return {"value": flag["variants"][variant], "variant": variant, "reason": reason, **extra}

    default = flag["default"]
    if not flag.get("enabled", True):
        return answer(default, "DISABLED")
    layer = flag_layer(cfg, flag["key"])
    if layer is not None:
        if layer["id"] in covered_layers(cfg, held_holdouts(cfg, ctx)):
            return answer(default, "DEFAULT")
        hit = assign(cfg, layer, ctx)
        if hit:
            e, c, _ = hit
            if flag["key"] in c.get("flags", {}):
                return answer(
                    c["flags"][flag["key"]], "SPLIT", experiment=e["id"], cell=c["id"]
                )
    rules = flag.get("rules", [])
    for rule in rules:
        if not holds(rule.get("when"), ctx, cfg.get("segments", {})):
            continue
        if "variant" in rule:
            return answer(rule["variant"], "TARGETING_MATCH")
        ro = rule["rollout"]
        unit_key = ro.get("unit", "targetingKey")
        unit = unit_of(ctx, unit_key)
        if unit is None:
            code = "TARGETING_KEY_MISSING" if is_missing(ctx, unit_key) else "INVALID_CONTEXT"
            return answer(default, "ERROR", error=code)
        i = pick(ro.get("salt", flag["key"]), unit, [s["weight"] for s in ro["split"]])
        return answer(ro["split"][i]["variant"], "SPLIT")
    return answer(default, "STATIC" if not rules and layer is None else "DEFAULT")


def evaluate(cfg, ctx):
    allocations, held = allocate(cfg, ctx)
    flags = {f["key"]: resolve(cfg, f, ctx) for f in cfg.get("flags", [])}
    return {"context": ctx, "allocations": allocations, "holdouts": held, "flags": flags}


# --- deterministic inputs -----------------------------------------------------------------------


class SplitMix64:
    def __init__(self, state):
        self.state = state & MASK64

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def below(self, n):
        return scale(self.next(), n)

    def hex(self, nbytes):
        return "".join(f"{self.next():016x}" for _ in range((nbytes + 7) // 8))[: nbytes * 2]


def exactly_256_bytes(prefix, filler):
    s = prefix
    while len((s + filler).encode("utf-8")) <= 256:
        s += filler
    s += "x" * (256 - len(s.encode("utf-8")))
    assert len(s.encode("utf-8")) == 256, s
    return s


def units(rng):
    out = [
        # 1 byte
        "a", "Z", "0", "9", " ", "-", "_", ".", "~", "\t", "\n", "\x00", "\x7f",
        # exactly 256 bytes, ASCII and multi-byte
        "x" * 256,
        "0" * 256,
        " " * 256,
        "é" * 128,
        "中" * 85 + "x",
        "🧪" * 64,
        exactly_256_bytes("member-", "0123456789"),
        exactly_256_bytes("会员", "👩\u200d👩\u200d👧\u200d👦"),
        # 255 bytes (one short of the limit)
        "y" * 255,
        # unicode: CJK, emoji, ZWJ sequences, combining marks, RTL, bidi controls
        "会员-42", "用户", "ユーザー", "회원", "😀", "👩\u200d👩\u200d👧\u200d👦", "🇸🇪", "e\u0301", "é",
        "a\u0308\u0304", "مستخدم-42", "שלום", "\u202eevil\u202c", "\ufeffbom", "Ω", "\u00a0nbsp",
        "\U0010ffff",
        # whitespace
        "  ", "   leading", "trailing   ", "in side", "tab\tin", "line\nbreak", "\r\n",
        # digits only
        "1", "42", "123456789", "00000000000000000001", "18446744073709551616", "-1", "3.14",
        # ids people use
        "m-123", "device:ABC-123", "user@example.com", "00000000-0000-0000-0000-000000000000",
        "https://example.com/u/1", "null", "undefined", "true", "NaN", "%00", "\\", '"', "'", "{}",
    ]
    out += [f"member-{i}" for i in [0, 1, 2, 3, 9, 10, 11, 99, 100, 101, 999, 1000, 123456, 999999]]
    out += [rng.hex(16) for _ in range(12)]
    out += [f"{rng.hex(4)}-{rng.hex(2)}-{rng.hex(2)}-{rng.hex(2)}-{rng.hex(6)}" for _ in range(6)]
    for u in out:
        assert 1 <= len(u.encode("utf-8")) <= 256, repr(u)
    return out


SALTS = [
    "home", "home-2026q4", " ", "  ", "\t", "a", "0", "salt", "SALT", "prefetch-ramp",
    "层-实验", "🧪", "e\u0301", "מלח", "x" * 300, "with space", "h2026",
]

BUCKET_COUNTS = [1, 2, 3, 7, 100, 1000, 10_000, 65_536, 999_999, 1_000_000]

WEIGHTS = [
    [1],
    [7],
    [1, 1],
    [50, 50],
    [1, 2],
    [10, 90],
    [1, 2, 3],
    [0, 1],
    [1, 0],
    [0, 0, 5, 0],
    [3, 0, 0, 1, 0],
    [1, 1, 1, 1, 1, 1, 1],
    [5, 10, 15, 20, 25, 15, 10],
    list(range(1, 101)),
    [1] * 1000,
    [U32_MAX],
    [U32_MAX, U32_MAX],
    [U32_MAX, 1],
    [1, U32_MAX],
    [0, U32_MAX, 0],
    [2_147_483_648, 2_147_483_647, U32_MAX],
    [U32_MAX] * 7,
    [999_999, 1],
    [1, 999_999],
]


def bucket_cases(us):
    cases = []
    for i, u in enumerate(us):
        for j, n in enumerate(BUCKET_COUNTS):
            if (i + j) % 10 >= 8:  # keep ~80% of the grid
                continue
            salt = SALTS[(i * 7 + j) % len(SALTS)]
            cases.append({"salt": salt, "unit": u, "buckets": n, "bucket": bucket(salt, u, n)})
    # sequential ids under one salt, every bucket count
    for i in range(40):
        u = f"member-{i + 1}"
        n = BUCKET_COUNTS[i % len(BUCKET_COUNTS)]
        cases.append({"salt": "home", "unit": u, "buckets": n, "bucket": bucket("home", u, n)})
    return cases


def cell_cases(us):
    cases = []
    for i, u in enumerate(us):
        for j, w in enumerate(WEIGHTS):
            if (i + 3 * j) % 4 != 0:  # keep a quarter of the grid
                continue
            salt = SALTS[(i + j) % len(SALTS)]
            cases.append({"salt": salt, "unit": u, "weights": w, "cell": pick(salt, u, w)})
    return cases


def hash_cases(us):
    cases = []
    for i, salt in enumerate(SALTS):
        for u in (us[i], us[(i * 11) % len(us)]):
            cases.append(
                {
                    "salt": salt,
                    "unit": u,
                    "seed": f"{seed(salt):016x}",
                    "hash": f"{hash_unit(salt, u):016x}",
                }
            )
    return cases


# --- the whole-config cases -----------------------------------------------------------------------


def bool_flag(key, default="off", **extra):
    return {"key": key, "type": "bool", "variants": {"on": True, "off": False}, "default": default, **extra}


def configs(rng):
    members = [f"member-{i}" for i in range(1, 41)]
    out = []

    out.append(
        {
            "name": "two layers, orthogonal",
            "config": {
                "layers": [
                    {"id": "home", "salt": "home-2026q4"},
                    {"id": "search", "buckets": 1000},
                ],
                "experiments": [
                    {
                        "id": "smarter-prefetch",
                        "layer": "home",
                        "ranges": ["0..5000"],
                        "cells": [
                            {"id": "control", "weight": 1, "flags": {"prefetch": "off"}},
                            {"id": "treatment", "weight": 1, "flags": {"prefetch": "on"}},
                        ],
                    },
                    {
                        "id": "ranker-v2",
                        "layer": "search",
                        "salt": "ranker-v2-reshuffle-1",
                        "ranges": ["0..300", "600..1000"],
                        "cells": [
                            {"id": "control", "weight": 2, "flags": {"ranker": "v1"}},
                            {"id": "v2", "weight": 1, "flags": {"ranker": "v2"}},
                            {"id": "v3", "weight": 1, "flags": {"ranker": "v3"}},
                        ],
                    },
                ],
                "flags": [
                    bool_flag("prefetch"),
                    {
                        "key": "ranker",
                        "type": "string",
                        "variants": {"v1": "bm25", "v2": "learned", "v3": "hybrid"},
                        "default": "v1",
                    },
                ],
            },
            "contexts": [{"targetingKey": m} for m in members],
        }
    )

    out.append(
        {
            "name": "mutual exclusion in one layer",
            "config": {
                "layers": [{"id": "player", "buckets": 100}],
                "experiments": [
                    {
                        "id": "autoplay",
                        "layer": "player",
                        "ranges": ["0..20", "60..70"],
                        "cells": [
                            {"id": "off", "flags": {"autoplay": "off"}},
                            {"id": "on", "flags": {"autoplay": "on"}},
                        ],
                    },
                    {
                        "id": "bitrate",
                        "layer": "player",
                        "ranges": ["20..45"],
                        "cells": [
                            {"id": "low", "weight": 1, "flags": {"bitrate": "low"}},
                            {"id": "mid", "weight": 0, "flags": {"bitrate": "mid"}},
                            {"id": "high", "weight": 3, "flags": {"bitrate": "high"}},
                        ],
                    },
                    {
                        "id": "skip-intro",
                        "layer": "player",
                        "ranges": ["45..60", "90..100"],
                        "cells": [{"id": "only", "weight": 5}],
                    },
                ],
                "flags": [
                    bool_flag("autoplay", default="on"),
                    {
                        "key": "bitrate",
                        "type": "int",
                        "variants": {"low": 800, "mid": 2500, "high": 6000},
                        "default": "mid",
                    },
                ],
            },
            "contexts": [{"targetingKey": m} for m in members],
        }
    )

    out.append(
        {
            "name": "eligibility: when false means no experiment",
            "config": {
                "layers": [{"id": "checkout"}],
                "experiments": [
                    {
                        "id": "one-click",
                        "layer": "checkout",
                        "ranges": ["0..10000"],
                        "when": {"country": {"in": ["US", "CA"]}, "beta": {"exists": True}},
                        "cells": [
                            {"id": "control", "flags": {"one-click": "off"}},
                            {"id": "treatment", "flags": {"one-click": "on"}},
                        ],
                    }
                ],
                "flags": [
                    bool_flag(
                        "one-click",
                        rules=[{"when": {"employee": True}, "variant": "on"}],
                    )
                ],
            },
            "contexts": [
                {"targetingKey": m, **extra}
                for i, m in enumerate(members[:24])
                for extra in [
                    [
                        {"country": "US", "beta": True},
                        {"country": "CA", "beta": False},
                        {"country": "SE", "beta": True},
                        {"country": "US"},
                        {"country": "SE", "employee": True},
                        {"country": "US", "beta": True, "employee": True},
                    ][i % 6]
                ]
            ],
        }
    )

    out.append(
        {
            "name": "holdout covering one of two layers",
            "config": {
                "layers": [{"id": "home"}, {"id": "search"}],
                "experiments": [
                    {
                        "id": "row-order",
                        "layer": "home",
                        "ranges": ["0..10000"],
                        "cells": [
                            {"id": "a", "flags": {"row-order": "a"}},
                            {"id": "b", "flags": {"row-order": "b"}},
                        ],
                    },
                    {
                        "id": "typeahead",
                        "layer": "search",
                        "ranges": ["0..10000"],
                        "cells": [
                            {"id": "control", "flags": {"typeahead": "off"}},
                            {"id": "on", "flags": {"typeahead": "on"}},
                        ],
                    },
                ],
                "holdouts": [
                    {"id": "holdout-2026", "salt": "h2026", "ranges": ["0..3000"], "layers": ["home"]},
                    {"id": "tiny", "buckets": 1000, "ranges": ["999..1000"], "layers": ["search"]},
                ],
                "flags": [
                    {
                        "key": "row-order",
                        "type": "string",
                        "variants": {"a": "popular-first", "b": "recent-first"},
                        "default": "a",
                    },
                    bool_flag("typeahead"),
                ],
            },
            "contexts": [{"targetingKey": m} for m in members],
        }
    )

    out.append(
        {
            "name": "unit attributes: device_id layer, missing and invalid units",
            "config": {
                "layers": [{"id": "app"}, {"id": "tv", "unit": "device_id", "buckets": 1000}],
                "experiments": [
                    {
                        "id": "onboarding",
                        "layer": "app",
                        "ranges": ["0..10000"],
                        "cells": [
                            {"id": "old", "flags": {"onboarding": "old"}},
                            {"id": "new", "flags": {"onboarding": "new"}},
                        ],
                    },
                    {
                        "id": "tv-ui",
                        "layer": "tv",
                        "ranges": ["0..1000"],
                        "cells": [
                            {"id": "classic", "weight": 1, "flags": {"tv-ui": "classic"}},
                            {"id": "grid", "weight": 2, "flags": {"tv-ui": "grid"}},
                        ],
                    },
                ],
                "flags": [
                    {
                        "key": "onboarding",
                        "type": "string",
                        "variants": {"old": "v1", "new": "v2"},
                        "default": "old",
                    },
                    {
                        "key": "tv-ui",
                        "type": "string",
                        "variants": {"classic": "classic", "grid": "grid"},
                        "default": "classic",
                    },
                    bool_flag(
                        "household-ramp",
                        rules=[
                            {
                                "rollout": {
                                    "unit": "household_id",
                                    "split": [
                                        {"variant": "on", "weight": 1},
                                        {"variant": "off", "weight": 1},
                                    ],
                                }
                            }
                        ],
                    ),
                ],
            },
            "contexts": (
                [{"device_id": f"tv-{rng.hex(6)}"} for _ in range(8)]
                + [{"targetingKey": m, "device_id": f"tv-{i}"} for i, m in enumerate(members[:8])]
                + [{"targetingKey": m, "household_id": f"hh-{i}"} for i, m in enumerate(members[8:16])]
                + [
                    {},
                    {"targetingKey": None, "device_id": None},
                    {"targetingKey": "", "device_id": 42, "household_id": ""},
                    {"targetingKey": "x" * 257, "household_id": 7},
                    {"targetingKey": "x" * 256, "household_id": "x" * 256},
                    {"targetingKey": 12345},
                    {"device_id": "会员-42", "household_id": "🧪"},
                ]
            ),
        }
    )

    out.append(
        {
            "name": "flags: rules, rollouts, disabled, static, types",
            "config": {
                "segments": {
                    "nordics": {"country": {"in": ["SE", "NO", "DK", "FI"]}},
                    "staff": {"any": [{"employee": True}, {"email_domain": {"eq": "example.com"}}]},
                },
                "layers": [{"id": "home"}],
                "experiments": [
                    {
                        "id": "hero",
                        "layer": "home",
                        "ranges": ["0..4000"],
                        "when": {"not": {"segment": "staff"}},
                        "cells": [
                            {"id": "small", "flags": {"hero-size": "small"}},
                            {"id": "large", "flags": {"hero-size": "large"}},
                        ],
                    }
                ],
                "flags": [
                    {
                        "key": "hero-size",
                        "type": "int",
                        "variants": {"small": 200, "large": 480, "staff": -1},
                        "default": "small",
                        "rules": [
                            {"when": {"segment": "staff"}, "variant": "staff"},
                            {
                                "when": {"segment": "nordics"},
                                "rollout": {
                                    "split": [
                                        {"variant": "small", "weight": 1},
                                        {"variant": "large", "weight": 3},
                                    ]
                                },
                            },
                        ],
                    },
                    bool_flag(
                        "new-search",
                        rules=[
                            {"when": {"platform": {"eq": "tv"}}, "variant": "off"},
                            {
                                "rollout": {
                                    "salt": "new-search-ramp-1",
                                    "split": [
                                        {"variant": "on", "weight": 10},
                                        {"variant": "off", "weight": 90},
                                    ],
                                }
                            },
                        ],
                    ),
                    {
                        "key": "checkout.theme",
                        "type": "object",
                        "variants": {
                            "light": {"bg": "#fff", "fg": "#000"},
                            "dark": {"bg": "#000", "fg": "#fff", "contrast": 1.5},
                        },
                        "default": "light",
                        "rules": [{"when": {"theme": {"in": ["dark", "oled"]}}, "variant": "dark"}],
                    },
                    {
                        "key": "price-factor",
                        "type": "float",
                        "variants": {"base": 0.25, "promo": 1.5},
                        "default": "base",
                        "rules": [
                            {
                                "rollout": {
                                    "salt": "promo",
                                    "split": [
                                        {"variant": "base", "weight": 0},
                                        {"variant": "promo", "weight": 0},
                                        {"variant": "base", "weight": 7},
                                        {"variant": "promo", "weight": 3},
                                    ],
                                }
                            }
                        ],
                    },
                    bool_flag("kill-switch", default="on", enabled=False,
                              rules=[{"variant": "off"}]),
                    {
                        "key": "greeting",
                        "type": "string",
                        "variants": {"hello": "Hello", "hej": "Hej"},
                        "default": "hej",
                    },
                ],
            },
            "contexts": [
                {"targetingKey": m, **extra}
                for i, m in enumerate(members)
                for extra in [
                    [
                        {},
                        {"country": "SE"},
                        {"country": "NO", "platform": "tv"},
                        {"employee": True},
                        {"email_domain": "example.com", "country": "SE"},
                        {"country": "US", "theme": "dark"},
                        {"theme": "oled", "platform": "web"},
                        {"country": "DK", "employee": False, "theme": "light"},
                    ][i % 8]
                ]
            ]
            + [{"country": "SE"}, {"platform": "tv"}],
        }
    )

    out.append(
        {
            "name": "large bucket counts and uneven cells",
            "config": {
                "layers": [
                    {"id": "fine", "salt": "fine-层", "buckets": 1000000},
                    {"id": "coarse", "salt": " ", "buckets": 1},
                ],
                "experiments": [
                    {
                        "id": "fine-a",
                        "layer": "fine",
                        "ranges": ["0..1", "2..333333", "999999..1000000"],
                        "cells": [
                            {"id": "c0", "weight": 4294967295},
                            {"id": "c1", "weight": 1},
                            {"id": "c2", "weight": 4294967295},
                        ],
                    },
                    {
                        "id": "fine-b",
                        "layer": "fine",
                        "ranges": ["333333..666667"],
                        "cells": [{"id": f"k{i}", "weight": i} for i in range(10)],
                    },
                    {
                        "id": "everyone",
                        "layer": "coarse",
                        "salt": "🧪",
                        "ranges": ["0..1"],
                        "cells": [{"id": "x", "weight": 1}, {"id": "y", "weight": 1}],
                    },
                ],
                "flags": [],
            },
            "contexts": [{"targetingKey": u} for u in units(SplitMix64(7))[:40]],
        }
    )
    return out


def config_cases(rng):
    out = []
    for c in configs(rng):
        cases = [evaluate(c["config"], ctx) for ctx in c["contexts"]]
        out.append({"name": c["name"], "config": c["config"], "cases": cases})
    return out


def generate():
    rng = SplitMix64(0x2026_A110)
    us = units(rng)
    return {
        "version": 1,
        "algorithm": (
            "seed(salt) = xxh3_64(utf8(salt)) with seed 0; "
            "h = xxh3_64_with_seed(utf8(unit), seed(salt)); "
            "scale(h, n) = (h * n) >> 64 in 128 bits; "
            "bucket = scale(h, buckets); "
            "cell = first i with scale(h, sum(weights)) < weights[0] + .. + weights[i]. "
            "Seeds and hashes are lowercase hex u64."
        ),
        "hashes": hash_cases(us),
        "buckets": bucket_cases(us),
        "cells": cell_cases(us),
        "configs": config_cases(rng),
    }


# --- output: one case per line, configs indented ---------------------------------------------------


def dump(doc):
    enc = lambda v: json.dumps(v, ensure_ascii=False, separators=(", ", ": "))
    lines = ["{"]
    lines.append(f'  "version": {enc(doc["version"])},')
    lines.append(f'  "algorithm": {enc(doc["algorithm"])},')
    for name in ("hashes", "buckets", "cells"):
        lines.append(f'  "{name}": [')
        items = doc[name]
        lines += [f"    {enc(x)}{',' if i + 1 < len(items) else ''}" for i, x in enumerate(items)]
        lines.append("  ],")
    lines.append('  "configs": [')
    for ci, c in enumerate(doc["configs"]):
        cfg = json.dumps(c["config"], ensure_ascii=False, indent=2).replace("\n", "\n      ")
        lines.append("    {")
        lines.append(f'      "name": {enc(c["name"])},')
        lines.append(f'      "config": {cfg},')
        lines.append('      "cases": [')
        cases = c["cases"]
        lines += [f"        {enc(x)}{',' if i + 1 < len(cases) else ''}" for i, x in enumerate(cases)]
        lines.append("      ]")
        lines.append("    }" + ("," if ci + 1 < len(doc["configs"]) else ""))
    lines.append("  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def check(path):
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    passed = failed = 0

    def expect(ok, what):
        nonlocal passed, failed
        if ok:
            passed += 1
        else:
            failed += 1
            print(f"MISMATCH {what}", file=sys.stderr)

    for c in doc["hashes"]:
        got = (f"{seed(c['salt']):016x}", f"{hash_unit(c['salt'], c['unit']):016x}")
        expect(got == (c["seed"], c["hash"]), f"hash {c!r}: got {got}")
    for c in doc["buckets"]:
        got = bucket(c["salt"], c["unit"], c["buckets"])
        expect(got == c["bucket"], f"bucket {c!r}: got {got}")
    for c in doc["cells"]:
        got = pick(c["salt"], c["unit"], c["weights"])
        expect(got == c["cell"], f"cell {c!r}: got {got}")
    for cfg in doc["configs"]:
        for case in cfg["cases"]:
            got = evaluate(cfg["config"], case["context"])
            expect(got == case, f"config {cfg['name']!r} case {case['context']!r}: got {got}")
    print(f"vectors: {passed} passed, {failed} failed")
    return 1 if failed or passed == 0 else 0


def main(argv):
    if len(argv) == 2 and argv[1] == "generate":
        sys.stdout.write(dump(generate()))
        return 0
    if len(argv) == 3 and argv[1] == "check":
        return check(argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
