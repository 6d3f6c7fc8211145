//! pass@k against hand-computed values and exact binomials; the pass@1 interval against worked
//! examples.

use flexlora::eval::passk::{pass1_interval, pass_at_k, summarize, PassAtK, TaskCount};

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() < 1e-6, "{what}: got {a}, expected {b}");
}

#[test]
fn hand_computed_cases() {
    // 1 - C(n-c, k) / C(n, k), worked by hand.
    let cases = [
        (5, 2, 1, 1.0 - 3.0 / 5.0),
        (5, 2, 2, 1.0 - 3.0 / 10.0),    // C(3,2)=3, C(5,2)=10
        (3, 1, 2, 1.0 - 1.0 / 3.0),     // C(2,2)=1, C(3,2)=3
        (10, 3, 5, 1.0 - 21.0 / 252.0), // C(7,5)=21, C(10,5)=252
        (10, 1, 1, 0.1),
        (4, 2, 3, 1.0), // every 3 of 4 samples include a correct one
        (200, 0, 100, 0.0),
        (200, 200, 1, 1.0),
    ];
    for (n, c, k, want) in cases {
        close(pass_at_k(n, c, k).expect("valid"), want, &format!("pass@{k} n={n} c={c}"));
    }
    assert_eq!(pass_at_k(5, 2, 6), None, "k > n");
    assert_eq!(pass_at_k(5, 6, 1), None, "c > n");
    assert_eq!(pass_at_k(5, 2, 0), None, "k = 0");
}

fn binomial(n: u128, k: u128) -> u128 {
    if k > n {
        return 0;
    }
    (0..k).fold(1, |acc, i| acc * (n - i) / (i + 1))
}

#[test]
fn matches_exact_binomials() {
    for n in 1..=40usize {
        for c in 0..=n {
            for k in 1..=n {
                let exact = 1.0 - binomial((n - c) as u128, k as u128) as f64 / binomial(n as u128, k as u128) as f64;
                close(pass_at_k(n, c, k).expect("valid"), exact, &format!("n={n} c={c} k={k}"));
            }
        }
    }
    // Large n, where the binomials overflow: C(n-c,k)/C(n,k) also equals prod_{j<c} (n-k-j)/(n-j).
    let (n, c, k) = (200usize, 10usize, 100usize);
    let other_side: f64 = (0..c).map(|j| (n - k - j) as f64 / (n - j) as f64).product();
    close(pass_at_k(n, c, k).expect("valid"), 1.0 - other_side, "n=200 c=10 k=100");
}

#[test]
fn summary_over_tasks() {
    let counts = [TaskCount { n: 10, c: 10 }, TaskCount { n: 10, c: 0 }, TaskCount { n: 10, c: 5 }, TaskCount { n: 10, c: 5 }];
    let s = summarize(&counts).expect("summary");
    assert_eq!(s.tasks, 4);
    // pass@10 per task: 1, 0, 1 (5 wrong < 10 drawn), 1. pass@100 needs n >= 100: not reported.
    assert_eq!(s.pass_at, vec![PassAtK { k: 1, value: 0.5 }, PassAtK { k: 10, value: 0.75 }]);
    // Per-task pass@1 1, 0, .5, .5: mean .5, sample variance (.25+.25+0+0)/3, se = sqrt(var/4),
    // half width 1.96 * se = 0.4000833.
    close(s.pass1_ci95.0, 0.0999167, "ci low");
    close(s.pass1_ci95.1, 0.9000833, "ci high");
    assert!(summarize(&[]).is_err());
    assert!(summarize(&[TaskCount { n: 3, c: 4 }]).is_err());
    let s = summarize(&[TaskCount { n: 100, c: 7 }; 3]).expect("summary");
    assert_eq!(s.pass_at.iter().map(|p| p.k).collect::<Vec<_>>(), vec![1, 10, 100]);
}

#[test]
fn interval_worked_example() {
    // 100 tasks, one sample each, 30 pass: p = .3, sample variance (30*.7^2 + 70*.3^2)/99 = 21/99,
    // se = sqrt(21/99/100) = 0.0460566, half width 1.96 * se = 0.0902709 (the Wald interval).
    let per_task: Vec<f64> = (0..100).map(|i| if i < 30 { 1.0 } else { 0.0 }).collect();
    let (lo, hi) = pass1_interval(&per_task);
    close(lo, 0.3 - 0.0902709, "low");
    close(hi, 0.3 + 0.0902709, "high");
    // No spread: the interval collapses; it is clamped to [0, 1]; one task says nothing.
    assert_eq!(pass1_interval(&[1.0, 1.0, 1.0]), (1.0, 1.0));
    let (lo, _) = pass1_interval(&[0.0, 0.0, 0.0, 1.0]);
    assert_eq!(lo, 0.0);
    assert_eq!(pass1_interval(&[0.4]), (0.0, 1.0));
}
