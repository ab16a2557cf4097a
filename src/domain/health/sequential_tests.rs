//! Unit tests of `sequential.rs` (a file of their own: they outgrow the code).

use super::*;

/// Compiled in, as the chi-squared table is: the domain core reads no files.
const FIXTURE: &str = include_str!("../../../tests/fixtures/ssrm_reference.csv");
const REL_TOL: f64 = 1e-6;
const CHECK_FLOOR: f64 = 1e-300;

fn ln_gamma(x: f64) -> f64 {
    stirling_main(x) + 0.5 * (2.0 * std::f64::consts::PI).ln() + binet(x)
}

fn parse_list<T: std::str::FromStr>(s: &str) -> Vec<T>
where
    T::Err: std::fmt::Debug,
{
    s.split(';').map(|x| x.parse().unwrap()).collect()
}

#[test]
fn matches_reference_fixture() {
    let mut lines = FIXTURE.lines();
    assert_eq!(
        lines.next(),
        Some("case,point,weights,counts,ssrm_p_value,exact_p_value,exact_log_bf")
    );
    let mut current: Option<(String, SequentialTest, Option<usize>)> = None;
    let mut cases = 0;
    let mut checked = 0;
    let mut below_floor = 0;
    let mut onsets = 0;
    let mut arm_counts = std::collections::BTreeSet::new();
    let mut worst = (0.0f64, String::new());
    let mut worst_lbf = (0.0f64, String::new());
    let finish = |c: Option<(String, SequentialTest, Option<usize>)>, onsets: &mut usize| {
        if let Some((name, t, expected)) = c {
            assert_eq!(t.onset(), expected, "onset of {name}");
            *onsets += expected.is_some() as usize;
        }
    };
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f.len(), 7, "{line}");
        let (name, point) = (f[0], f[1].parse::<usize>().unwrap());
        if current.as_ref().is_none_or(|c| c.0 != name) {
            finish(current.take(), &mut onsets);
            assert_eq!(point, 0, "{name} must start at point 0");
            let w: Vec<f64> = parse_list(f[2]);
            arm_counts.insert(w.len());
            current = Some((name.to_string(), SequentialTest::new(&w).unwrap(), None));
            cases += 1;
        }
        let (_, t, expected_onset) = current.as_mut().unwrap();
        assert_eq!(t.points(), point, "{name}: points must be consecutive");
        t.observe(&parse_list::<u64>(f[3]));
        let exact_lbf: f64 = f[6].parse().unwrap();
        let lbf_err = (t.log_bayes_factor() - exact_lbf).abs();
        // 1e-6 absolute is 1e-6 relative in BF; beyond |log BF| = 1000
        // (BF far outside f64 range) ask for 1e-9 relative instead.
        let lbf_tol = 1e-6 * exact_lbf.abs().max(1000.0) / 1000.0;
        assert!(
            lbf_err <= lbf_tol,
            "{name} point {point}: log BF {} vs exact {exact_lbf}",
            t.log_bayes_factor()
        );
        if lbf_err / lbf_tol > worst_lbf.0 {
            worst_lbf = (
                lbf_err / lbf_tol,
                format!("{name} point {point} (abs {lbf_err:e})"),
            );
        }
        let exact: f64 = f[5].parse().unwrap();
        let got = t.p_value();
        if exact < ONSET_LEVEL && expected_onset.is_none() {
            *expected_onset = Some(point);
        }
        assert_eq!(t.onset(), *expected_onset, "{name} point {point}: onset");
        if exact >= CHECK_FLOOR {
            let rel = (got - exact).abs() / exact;
            if rel > worst.0 {
                worst = (
                    rel,
                    format!("{name} point {point} (exact {exact:e}, got {got:e})"),
                );
            }
            assert!(
                rel <= REL_TOL,
                "{name} point {point}: got {got:e}, exact {exact:e}, rel {rel:e}"
            );
            checked += 1;
        } else {
            assert!(
                got < 1e-299,
                "{name} point {point}: got {got:e}, exact below 1e-300"
            );
            below_floor += 1;
        }
    }
    finish(current.take(), &mut onsets);
    println!(
        "{cases} cases, {checked} p-values checked, {below_floor} below 1e-300, {onsets} onsets; \
         max p rel error {:e} at {}; max log BF error / tolerance {:e} at {}",
        worst.0, worst.1, worst_lbf.0, worst_lbf.1
    );
    assert!(
        cases >= 20 && below_floor > 0 && onsets >= 5,
        "fixture lost coverage"
    );
    assert_eq!(
        arm_counts,
        (2..=10).collect(),
        "fixture must cover 2..=10 arms"
    );
}

#[test]
fn ln_gamma_known_values() {
    let cases = [
        (1.0, 0.0),
        (2.0, 0.0),
        (0.5, 0.5 * std::f64::consts::PI.ln()),
        (10.0, 362_880f64.ln()),
        (0.1, 2.252_712_651_734_206),
        (1e-5, 11.512_919_692_895_828),
        (1e6, 12_815_504.569_147_612),
    ];
    for (x, want) in cases {
        let got = ln_gamma(x);
        assert!(
            (got - want).abs() <= 1e-13 * want.abs().max(1.0),
            "lnΓ({x}) = {got}, want {want}"
        );
    }
}

#[test]
fn rejects_invalid_probabilities() {
    assert!(SequentialTest::new(&[]).is_none());
    assert!(SequentialTest::new(&[1.0]).is_none());
    assert!(SequentialTest::new(&[0.0, 1.0]).is_none());
    assert!(SequentialTest::new(&[-0.5, 1.5]).is_none());
    assert!(SequentialTest::new(&[f64::NAN, 1.0]).is_none());
    assert!(SequentialTest::new(&[f64::INFINITY, 1.0]).is_none());
    assert!(SequentialTest::new(&[f64::MAX, f64::MAX]).is_none());
    assert!(SequentialTest::new(&[1e-320, 1.0]).is_none());
    assert!(SequentialTest::new(&[0.5, 0.5]).is_some());
    assert!(SequentialTest::new(&[1.0, 2.0, 7.0]).is_some());
}

#[test]
fn empty_and_zero_points_leave_p_at_one() {
    let mut t = SequentialTest::new(&[1.0, 1.0, 1.0]).unwrap();
    assert_eq!(
        (t.p_value(), t.log_bayes_factor(), t.onset()),
        (1.0, 0.0, None)
    );
    t.observe(&[0, 0, 0]);
    t.observe(&[0, 0, 0]);
    assert_eq!(
        (t.p_value(), t.log_bayes_factor(), t.points()),
        (1.0, 0.0, 2)
    );
}

#[test]
fn single_identity_is_uninformative() {
    // Prior predictive of one draw is exactly p, so BF = 1.
    for w in [[1.0, 1.0], [0.1, 0.9], [1.0, 9999.0]] {
        for c in [[1, 0], [0, 1]] {
            let mut t = SequentialTest::new(&w).unwrap();
            t.observe(&c);
            assert!(
                t.log_bayes_factor().abs() < 1e-12,
                "{w:?} {c:?}: {}",
                t.log_bayes_factor()
            );
        }
    }
}

#[test]
fn all_traffic_to_one_arm_matches_product_form() {
    // [n, 0] with p = ½: BF = Π_{j<n} (α+j) / ((A+j) p).
    let mut t = SequentialTest::new(&[1.0, 1.0]).unwrap();
    let mut want = 0.0;
    for j in 0..3000u64 {
        let j = j as f64;
        want += ((5000.0 + j) / (10_000.0 + j) * 2.0).ln();
        t.observe(&[1, 0]);
    }
    assert!(
        (t.log_bayes_factor() - want).abs() < 1e-10,
        "{} vs {want}",
        t.log_bayes_factor()
    );
    assert!(t.onset().is_some());
}

#[test]
fn depends_only_on_cumulative_counts() {
    let w = [1.0, 2.0, 7.0];
    let mut a = SequentialTest::new(&w).unwrap();
    for c in [[120, 260, 700], [0, 0, 0], [95, 180, 760], [300, 610, 2050]] {
        a.observe(&c);
    }
    let mut b = SequentialTest::new(&w).unwrap();
    b.observe(&[515, 1050, 3510]);
    assert!((a.log_bayes_factor() - b.log_bayes_factor()).abs() < 1e-12);
}

#[test]
fn p_value_is_running_minimum() {
    let mut t = SequentialTest::new(&[1.0, 1.0]).unwrap();
    t.observe(&[4000, 3000]);
    let p_after_mismatch = t.p_value();
    assert!(p_after_mismatch < 1e-6);
    for _ in 0..50 {
        t.observe(&[3000, 3000]); // evidence swings back towards the null
    }
    assert!(t.log_bayes_factor() < -p_after_mismatch.ln());
    assert_eq!(t.p_value(), p_after_mismatch);
    assert_eq!(t.onset(), Some(0));
}

#[test]
fn helper_runs_whole_series() {
    let pts = vec![vec![10u64, 10], vec![0, 0], vec![5000, 3000]];
    let (p, onset) = sequential_p_value(&[1.0, 1.0], &pts).unwrap();
    let mut t = SequentialTest::new(&[1.0, 1.0]).unwrap();
    pts.iter().for_each(|c| t.observe(c));
    assert_eq!((p, onset), (t.p_value(), t.onset()));
    assert_eq!(onset, Some(2));
    assert!(sequential_p_value(&[1.0], &pts).is_none());
}
