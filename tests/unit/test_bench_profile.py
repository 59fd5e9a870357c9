"""tests/bench/profile.py's reading of py-spy's raw samples: stacks, categories, top functions."""

from __future__ import annotations

from tests.bench.profile import category, parse_raw, summarise

SITE = "/v/lib/python3.11/site-packages"
RAW = f"""\
Thread._bootstrap (threading.py:1002);Thread._bootstrap_inner (threading.py:1045);\
Thread.run (threading.py:982) 4
serve (/w/dts/server/main.py:10);commit (/w/dts/server/store/sqlite.py:99);dumps (json/a.py:2) 3
serve (/w/dts/server/main.py:10);info (/usr/lib/python3.11/logging/__init__.py:1489) 2
loop (/w/dts/worker/slots.py:5);_blocking ({SITE}/grpc/_channel.py:1162) 1
loop (/w/dts/worker/slots.py:5);tick (/w/dts/worker/slots.py:9) 1
<module> (x.py:1);f (x.py:2) 1
not a sample line
"""


def test_samples_are_read_leaf_first_with_their_counts() -> None:
    stacks = parse_raw(RAW)
    assert sum(stacks.values()) == 12 and len(stacks) == 6
    leaf_first = [f.function for f in max(stacks, key=lambda s: stacks[s] == 3)]
    assert leaf_first == ["dumps", "commit", "serve"]


def test_a_sample_goes_to_its_innermost_frame_that_a_rule_names() -> None:
    cats = {s[0].function: category(s) for s in parse_raw(RAW)}
    assert cats == {
        "Thread.run": "gRPC, protobuf",  # a thread of a C function alone: gRPC's poller
        "dumps": "store (SQLite, PostgreSQL)",  # json, called by the store
        "info": "logging",
        "_blocking": "gRPC, protobuf",
        "tick": "dts's own code",
        "f": "other",
    }


def test_the_summary_counts_categories_and_self_samples() -> None:
    s = summarise(parse_raw(RAW))
    assert s["samples"] == 12
    assert dict(s["categories"])["gRPC, protobuf"] == 5
    assert s["functions"][0] == ("threading.py:Thread.run", 4)
    assert ("json/a.py:dumps", 3) in s["functions"]
    assert ("grpc/_channel.py:_blocking", 1) in s["functions"]
