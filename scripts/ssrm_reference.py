#!/usr/bin/env python3
"""Regenerate tests/fixtures/ssrm_reference.csv, the reference table for the
sequential SRM test (Lindon & Malek 2022, as in Optimizely's ssrm-test 0.1.5).

Usage: python3 scripts/ssrm_reference.py [--repo-root DIR] [--out FILE]

Re-executes itself inside target/ssrm-reference-venv (created on first use,
with the pinned packages below), so the only requirement is a python3 with
venv and access to PyPI.

Each row is one point (bucket) of one case: case, point (0-based), weights and
counts (';'-separated, arm order), then two p-value columns
  ssrm_p_value   what ssrm-test 0.1.5 itself reports (float64, informational:
                 it drifts at large counts because it sums per-point float
                 lgamma differences);
  exact_p_value  min(1, min_t exp(-log BF_t)) with log BF evaluated from the
                 cumulative counts with mpmath at 50 significant digits.
and exact_log_bf, the 50-digit log BF of the cumulative counts at that point.
The Rust tests check against exact_p_value and exact_log_bf (and derive the
onset, the first point whose running p-value is < 0.001, from exact_p_value).
"""

import argparse
import math
import os
import pathlib
import random
import subprocess
import sys

PINS = ["ssrm-test==0.1.5", "mpmath==1.4.1"]
VENV_MARKER = "SSRM_REFERENCE_IN_VENV"

CONCENTRATION = 10000
ONSET_LEVEL = 0.001
CHECK_FLOOR = 1e-300  # the Rust test only compares p-values at or above this


def parse_args():
    here = pathlib.Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo-root", type=pathlib.Path, default=here.parent)
    ap.add_argument("--out", type=pathlib.Path, default=None,
                    help="default: <repo-root>/tests/fixtures/ssrm_reference.csv")
    return ap.parse_args()


def ensure_venv(repo_root):
    """Run the rest of the script under the pinned venv (pip is a no-op when
    the pins are already satisfied)."""
    if os.environ.get(VENV_MARKER) == "1":
        return
    venv = repo_root / "target" / "ssrm-reference-venv"
    py = venv / "bin" / "python"
    if not py.exists():
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.check_call([sys.executable, "-m", "venv", str(venv)])
    subprocess.check_call([str(py), "-m", "pip", "install", "-q",
                           "--disable-pip-version-check", *PINS])
    env = dict(os.environ, **{VENV_MARKER: "1"})
    os.execve(str(py), [str(py), str(pathlib.Path(__file__).resolve()),
                        *sys.argv[1:]], env)


# ---------------------------------------------------------------------------
# Deterministic count generation. Only random.Random.random() is used (its
# Mersenne Twister stream is stable across Python versions); numpy's
# generators are not guaranteed stable across numpy releases.
# ---------------------------------------------------------------------------

def normal(rng):
    u1 = rng.random() or 1e-300
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * rng.random())


def binomial(rng, n, p):
    if n <= 0 or p <= 0.0:
        return 0
    if p >= 1.0:
        return n
    if n < 64:
        return sum(1 for _ in range(n) if rng.random() < p)
    k = int(round(n * p + math.sqrt(n * p * (1.0 - p)) * normal(rng)))
    return min(max(k, 0), n)


def multinomial(rng, n, q):
    out, rest, mass = [], n, 1.0
    for qi in q[:-1]:
        k = binomial(rng, rest, qi / mass) if mass > 0 else 0
        out.append(k)
        rest -= k
        mass -= qi
    out.append(rest)
    return out


def allocate(total, shape):
    """Split an exact integer total over buckets proportionally to shape
    (largest remainder), so large cases hit their total exactly."""
    s = sum(shape)
    raw = [total * x / s for x in shape]
    base = [int(math.floor(r)) for r in raw]
    left = total - sum(base)
    order = sorted(range(len(raw)), key=lambda i: (base[i] - raw[i], i))
    for i in order[:left]:
        base[i] += 1
    return base


def hourly_shape(points):
    return [1.0 + 0.6 * math.sin(2 * math.pi * (h - 6) / 24.0) for h in range(points)]


def daily_shape(points):
    # weekly seasonality plus slow growth
    return [(1.0 + 0.25 * math.sin(2 * math.pi * d / 7.0)) * (1.0 + d / 400.0)
            for d in range(points)]


def tilt(p, eps, arm=0):
    """Traffic probabilities with arm `arm` scaled by (1+eps), renormalised."""
    q = list(p)
    q[arm] *= 1.0 + eps
    s = sum(q)
    return [x / s for x in q]


def series(rng, weights, totals, mismatch=None, start=0):
    """Counts per bucket. `mismatch` (list of probabilities) replaces the null
    allocation from bucket `start` on."""
    s = sum(float(w) for w in weights)
    p = [float(w) / s for w in weights]
    pts = []
    for i, t in enumerate(totals):
        q = mismatch if (mismatch is not None and i >= start) else p
        pts.append(multinomial(rng, t, q))
    return pts


def null_probs(weights):
    s = sum(float(w) for w in weights)
    return [float(w) / s for w in weights]


def build_cases():
    cases = []

    def add(name, weights, points):
        cases.append((name, [str(w) for w in weights], points))

    R = random.Random

    # --- small / medium traffic, no mismatch (p should stay near 1) -------
    w = ["1", "1"]
    rng = R(101)
    add("k2_even_hourly_null", w,
        series(rng, w, [int(400 * x) for x in hourly_shape(72)]))

    w = ["0.1", "0.9"]
    rng = R(102)
    add("k2_0.1_0.9_daily_null", w,
        series(rng, w, [int(3000 * x) for x in daily_shape(365)]))

    w = ["1", "2", "7"]
    rng = R(103)
    add("k3_1_2_7_hourly_null", w,
        series(rng, w, [int(2500 * x) for x in hourly_shape(72)]))

    w = ["1", "1", "1", "1", "1"]
    rng = R(104)
    add("k5_even_daily_null", w,
        series(rng, w, [int(20000 * x) for x in daily_shape(365)]))

    w = ["5", "1", "1", "1", "1", "1", "1", "1", "1", "1"]
    rng = R(105)
    add("k10_5x_control_hourly_null", w,
        series(rng, w, [int(8000 * x) for x in hourly_shape(72)]))

    # --- mismatch starting part-way: onset bucket ---------------------------
    w = ["1", "2", "7"]
    rng = R(201)
    tot = [int(3000 * x) for x in hourly_shape(72)]
    add("k3_1_2_7_hourly_onset_h30", w,
        series(rng, w, tot, tilt(null_probs(w), 0.12, arm=0), start=30))

    w = ["0.1", "0.9"]
    rng = R(202)
    tot = [int(5000 * x) for x in daily_shape(365)]
    add("k2_0.1_0.9_daily_onset_d200", w,
        series(rng, w, tot, tilt(null_probs(w), 0.03, arm=0), start=200))

    w = ["1", "1", "1", "1"]
    rng = R(203)
    tot = [int(1500 * x) for x in hourly_shape(72)]
    add("k4_even_hourly_onset_h10_strong", w,
        series(rng, w, tot, tilt(null_probs(w), 0.5, arm=3), start=10))

    w = ["2", "3", "5", "7", "11", "13"]
    rng = R(204)
    tot = [int(40000 * x) for x in daily_shape(365)]
    add("k6_primes_daily_onset_d100", w,
        series(rng, w, tot, tilt(null_probs(w), 0.01, arm=2), start=100))

    w = ["1"] * 8
    rng = R(205)
    tot = [int(6000 * x) for x in hourly_shape(72)]
    add("k8_even_hourly_onset_h48", w,
        series(rng, w, tot, tilt(null_probs(w), 0.12, arm=5), start=48))

    # a broken arm that stops receiving traffic: p collapses to 0 quickly
    w = ["1", "1", "1"]
    rng = R(206)
    tot = [int(2000 * x) for x in hourly_shape(72)]
    add("k3_even_hourly_arm_dies_h20", w,
        series(rng, w, tot, [0.5, 0.5, 0.0], start=20))

    # --- sparse series: most buckets empty ----------------------------------
    w = ["1", "1"]
    rng = R(301)
    tot = [(rng.randrange(1, 6) if rng.random() < 0.2 else 0) for _ in range(72)]
    add("k2_even_hourly_sparse", w, series(rng, w, tot))

    w = ["1", "2", "7"]
    rng = R(302)
    tot = [(rng.randrange(1, 30) if rng.random() < 0.15 else 0) for _ in range(365)]
    add("k3_1_2_7_daily_sparse", w, series(rng, w, tot))

    w = ["1", "1", "1", "1", "1", "1", "1"]
    rng = R(303)
    tot = [(1 if rng.random() < 0.5 else 0) for _ in range(365)]  # unit-level
    add("k7_even_daily_unit_level", w, series(rng, w, tot))

    w = ["1", "1", "1", "1", "1", "1", "1", "1", "1", "2"]
    rng = R(304)
    tot = [(rng.randrange(1, 200) if rng.random() < 0.1 else 0) for _ in range(365)]
    add("k10_daily_sparse_mismatch", w,
        series(rng, w, tot, tilt(null_probs(w), 0.6, arm=9), start=0))

    # tiny prior mass on one arm (alpha = 1 and 0.1): small-argument lgamma
    w = ["1", "9999"]
    rng = R(305)
    tot = [(rng.randrange(1, 40) if rng.random() < 0.3 else 0) for _ in range(72)]
    add("k2_1_9999_hourly_sparse_small_alpha", w, series(rng, w, tot))

    w = ["1", "99999", "50000"]
    rng = R(306)
    tot = [int(3000 * x) for x in daily_shape(365)]
    add("k3_tiny_arm_daily_small_alpha_mismatch", w,
        series(rng, w, tot, tilt(null_probs(w), 4.0, arm=0), start=50))

    # --- large traffic: totals up to 1e9 identities -------------------------
    w = ["1", "1", "1", "1", "1"]
    rng = R(401)
    add("k5_even_daily_1e9_null", w,
        series(rng, w, allocate(10**9, daily_shape(365))))

    w = ["1", "2", "7"]
    rng = R(402)
    add("k3_1_2_7_hourly_1e9_null", w,
        series(rng, w, allocate(10**9, hourly_shape(72))))

    w = ["0.1", "0.9"]
    rng = R(403)
    add("k2_0.1_0.9_daily_1e9_null", w,
        series(rng, w, allocate(10**9, daily_shape(365))))

    w = ["1"] * 10
    rng = R(404)
    add("k10_even_hourly_1e9_null", w,
        series(rng, w, allocate(10**9, hourly_shape(72))))

    # tiny relative mismatch at 1e9 traffic: p walks through 1e-3 .. 1e-300
    # and below over the series (exact values below 1e-300 still recorded)
    w = ["1", "1"]
    rng = R(405)
    add("k2_even_daily_1e9_drift_to_1e-380", w,
        series(rng, w, allocate(10**9, daily_shape(365)),
               tilt(null_probs(w), 0.0027, arm=0)))

    w = ["1", "2", "7"]
    rng = R(406)
    add("k3_1_2_7_daily_1e9_onset_d120", w,
        series(rng, w, allocate(10**9, daily_shape(365)),
               tilt(null_probs(w), 0.004, arm=0), start=120))

    w = ["1", "1", "1", "1", "1"]
    rng = R(407)
    add("k5_even_hourly_1e9_drift", w,
        series(rng, w, allocate(10**9, hourly_shape(72)),
               tilt(null_probs(w), 0.0025, arm=1)))

    w = ["3", "1", "1", "1", "1", "1", "1", "1", "1", "1"]
    rng = R(408)
    add("k10_3x_control_daily_1e9_drift", w,
        series(rng, w, allocate(10**9, daily_shape(365)),
               tilt(null_probs(w), 0.004, arm=7)))

    # gross mismatch at 1e9: exact p far below 1e-300 after a few buckets
    w = ["1", "1", "1", "1"]
    rng = R(409)
    add("k4_even_hourly_1e9_gross", w,
        series(rng, w, allocate(10**9, hourly_shape(72)),
               tilt(null_probs(w), 0.05, arm=0)))

    # 9 arms, uneven, with a mild mismatch at 1e8
    w = ["0.3", "0.1", "0.1", "0.1", "0.1", "0.1", "0.1", "0.05", "0.05"]
    rng = R(410)
    add("k9_uneven_daily_1e8_onset_d250", w,
        series(rng, w, allocate(10**8, daily_shape(365)),
               tilt(null_probs(w), 0.015, arm=7), start=250))

    return cases


# ---------------------------------------------------------------------------
# Reference values
# ---------------------------------------------------------------------------

def exact_p_values(weights, points, mp):
    mp.mp.dps = 50
    w = [mp.mpf(x) for x in weights]
    s = sum(w)
    p = [x / s for x in w]
    alpha = [CONCENTRATION * x for x in p]
    a_sum = mp.mpf(CONCENTRATION)
    log_p = [mp.log(x) for x in p]
    lg_alpha = [mp.loggamma(a) for a in alpha]
    lg_a_sum = mp.loggamma(a_sum)
    n = [0] * len(weights)
    running = mp.mpf(1)
    out = []
    for pt in points:
        n = [a + b for a, b in zip(n, pt)]
        total = sum(n)
        lbf = lg_a_sum - mp.loggamma(a_sum + total)
        for v in range(len(n)):
            if n[v]:
                lbf += mp.loggamma(alpha[v] + n[v]) - lg_alpha[v] - n[v] * log_p[v]
        running = min(running, mp.exp(-lbf))
        out.append((running, lbf))
    return out


def ssrm_p_values(weights, points):
    import numpy as np
    from ssrm_test import ssrm_test
    p = np.array(null_probs(weights))
    return [float(x) for x in ssrm_test.sequential_p_values(
        np.array(points, dtype=np.int64), p)]


def fmt_exact(x, mp):
    if x == 1:
        return "1"
    return mp.nstr(x, 17, min_fixed=0, max_fixed=0)


def main():
    args = parse_args()
    repo_root = args.repo_root.resolve()
    ensure_venv(repo_root)
    import mpmath as mp

    out = args.out or (repo_root / "tests" / "fixtures" / "ssrm_reference.csv")
    out.parent.mkdir(parents=True, exist_ok=True)

    rows = []
    worst = (0.0, None)
    summary = []
    for name, weights, points in build_cases():
        exact_both = exact_p_values(weights, points, mp)
        exact = [e for e, _ in exact_both]
        ssrm = ssrm_p_values(weights, points)
        onset = None
        closest = math.inf  # |log10(p / level)| nearest the onset threshold
        for i, (e, s) in enumerate(zip(exact, ssrm)):
            if e < ONSET_LEVEL and onset is None:
                onset = i
            if e > 0:
                closest = min(closest, abs(float(mp.log10(e / ONSET_LEVEL))))
            if e >= CHECK_FLOOR:
                rel = abs(float((mp.mpf(s) - e) / e))
                if rel > worst[0]:
                    worst = (rel, (name, i, float(e), s))
            rows.append((name, i, ";".join(weights),
                         ";".join(str(c) for c in points[i]), repr(s),
                         fmt_exact(e, mp), mp.nstr(exact_both[i][1], 20)))
        total = sum(sum(pt) for pt in points)
        summary.append((name, len(weights), len(points), total, onset,
                        float(exact[-1]) if exact[-1] >= CHECK_FLOOR else None,
                        mp.nstr(exact[-1], 3), closest))
        assert closest > 1e-4, f"{name}: a p-value sits too close to the onset level"

    with open(out, "w", newline="\n") as f:
        f.write("case,point,weights,counts,ssrm_p_value,exact_p_value,exact_log_bf\n")
        for r in rows:
            f.write(",".join(str(x) for x in r) + "\n")

    print(f"wrote {out}: {len(rows)} rows, {len(summary)} cases, "
          f"{out.stat().st_size} bytes")
    print("case | arms | points | identities | onset | final exact p | "
          "min |log10(p/0.001)|")
    for name, k, npts, total, onset, _, final, closest in summary:
        print(f"{name} | {k} | {npts} | {total} | {onset} | {final} | {closest:.3g}")
    rel, where = worst
    print(f"max relative deviation ssrm-test vs exact (exact >= 1e-300): "
          f"{rel:.3e} at {where}")


if __name__ == "__main__":
    main()
