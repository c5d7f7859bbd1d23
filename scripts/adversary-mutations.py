#!/usr/bin/env python3
"""Do the adversarial tests fail without the defence they prove? For each defence of
docs/security.md below, this script disables it with a one-line change to the source, runs the e2e
test that proves it, and puts the source back: the test must fail. Prints one line per defence.

Usage (from the repository root, with a clean working tree for the files it changes):
  CARGO_TARGET_DIR=~/.cache/zdn-ci-target python3 scripts/adversary-mutations.py [NAME ...]
Each mutation rebuilds `zdn` and the e2e test binary (a few minutes on 2 cores) and runs one test.
"""
import os
import subprocess
import sys
import time

# name, file, the defence's line(s), the line(s) without it, the test that must fail.
MUTATIONS = [
    ("item1-data-to-unproven-address", "protocol/src/paced/path.rs",
     "        if self.target == Some(from) || len < CHALLENGE_LEN {\n"
     "            return PathAction::Nothing;\n        }",
     "        if self.target == Some(from) || len < CHALLENGE_LEN {\n"
     "            return PathAction::Nothing;\n        }\n"
     "        if len > 0 {\n            self.target = Some(from);\n"
     "            return PathAction::Nothing;\n        }",
     "adversary::the_lane_never_sends_an_unproven_address_more_than_it_sent"),
    ("item1-sessions-per-peer", "node/src/net/paced/server.rs",
     "Slots::new(MAX_SESSIONS, MAX_SESSIONS_PER_PEER)", "Slots::new(MAX_SESSIONS, MAX_SESSIONS)",
     "adversary::a_session_ends_with_its_connection_and_a_peer_holds_at_most_two"),
    ("item3-fair-stream-eviction", "node/src/net/accept.rs",
     "    (most >= held + 2).then_some(newest)", "    (most >= held + 2 && false).then_some(newest)",
     "adversary::slots::item3_a_few_identities_cannot_take_every_chunk_stream"),
    ("item4-floor-rate", "node/src/net/frame.rs",
     "pub const FLOOR_RATE: u64 = 4 * 1024;", "pub const FLOOR_RATE: u64 = 0;",
     "adversary::trickle::item4_a_trickling_peer_does_not_hold_a_fetch"),
    ("item5-seen-set", "node/src/net/swarm/seen.rs",
     "        if !self.set.insert(hash) {", "        if !self.set.insert(hash) && false {",
     "adversary::gossip::item5_a_replayed_announcement_starts_nothing"),
    ("item5-names-only-forward", "node/src/store/names.rs",
     "    order != Ordering::Greater\n", "    order != Ordering::Greater || true\n",
     "adversary::gossip::item5_a_replayed_older_version_does_not_move_a_name_back"),
    ("item6-bad-data-bans", "node/src/net/peers/score.rs",
     "            Offence::BadData => 2.0 * BAN_AT,", "            Offence::BadData => 1.0,",
     "adversary::penalties::item6_a_liar_is_banned_from_every_transfer_and_by_the_lane"),
    ("item7-subnet-budget", "node/src/net/chunk/budget.rs",
     "                rate: SUBNET_REQUESTS,", "                rate: (4000, 24000),",
     "adversary::requests::item7_cheap_requests_are_budgeted_per_peer_and_subnet"),
    # A key's providers as libp2p's MemoryStore keeps them: the first 20, whoever they are.
    ("item8-fair-providers-per-key", "node/src/net/swarm/providers.rs",
     "        if mine >= MAX_PER_KEY_SUBNET {\n            return None;\n        }\n"
     "        if list.len() < MAX_PER_KEY {\n            return Some(None);\n        }\n",
     "        if list.len() < MAX_PER_KEY {\n            return Some(None);\n        }\n"
     "        if mine < MAX_PER_KEY {\n            return None;\n        }\n",
     "adversary::dht::item8_a_flood_of_provider_records_crowds_out_no_one"),
    ("amplification-linger", "node/src/net/paced/server.rs",
     "    if end != EndReason::Complete {\n        return;\n    }",
     "    if end != EndReason::Complete || true {\n        return;\n    }",
     "adversary::amplification::late_copies_of_done_reach_an_open_port_and_get_no_answer"),
]


def run(name, path, defence, without, test):
    source = open(path).read()
    if source.count(defence) != 1:
        return f"{name}: the defence's line is not found once in {path} (update this script)"
    open(path, "w").write(source.replace(defence, without))
    started = time.time()
    try:
        r = subprocess.run(
            ["cargo", "test", "-p", "zdn", "--test", "e2e", test, "--", "--exact"],
            capture_output=True, text=True, timeout=1800)
        out = r.stdout + r.stderr
    finally:
        open(path, "w").write(source)
    if "test result: FAILED" in out:
        verdict = "fails without the defence (as it must)"
    elif "test result: ok. 1 passed" in out:
        verdict = "PASSES without the defence: the test does not prove it"
    else:
        verdict = f"did not run (exit {r.returncode}): {out.strip().splitlines()[-1:]}"
    why = next((l.strip() for l in out.splitlines() if "panicked at" in l), "")
    return f"{name}: {verdict}; {time.time() - started:.0f} s; {test}" + (f"\n    {why}" if why else "")


def main():
    wanted = set(sys.argv[1:])
    for m in MUTATIONS:
        if not wanted or m[0] in wanted:
            print(run(*m), flush=True)


if __name__ == "__main__":
    main()
