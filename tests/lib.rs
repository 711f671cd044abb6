//! Helpers shared by the end-to-end tests: root detection, tools setup installs, and the
//! statistics the loss assertions use.

use std::path::{Path, PathBuf};

use meshdoctor_lab::{Lab, LabServer, nginx_config, plan::CONTROLLER_NS};

/// True when the test can run; prints why it is skipped otherwise. The lab needs root
/// (network namespaces, eBPF, nftables).
pub fn can_run(test: &str) -> bool {
    let root = meshdoctor_lab::is_root();
    if !root {
        eprintln!("skipped {test}: needs root (network namespaces, eBPF)");
    }
    root
}

/// The workspace root, where deploy/ is.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Whether `cargo xtask setup` has run for this test: under `cargo xtask test` (which runs
/// setup first and sets MESHDOCTOR_BIN_DIR) or in CI. Then a missing tool is a failure, not a
/// reason to skip.
pub fn setup_has_run() -> bool {
    std::env::var_os("CI").is_some() || std::env::var_os("MESHDOCTOR_BIN_DIR").is_some()
}

/// Skips a test whose tools are missing (`missing` says which), with a message; panics instead
/// when setup has run, since it installs them. Returns whether the test can go on.
pub fn tools_present(test: &str, missing: &str) -> bool {
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{test}: missing {missing}: run `cargo xtask setup`");
    assert!(
        !setup_has_run(),
        "{msg} (setup has run, so it must be there)"
    );
    eprintln!("skipped {msg}");
    false
}

/// `program`'s path: on PATH or in an sbin directory (where Debian puts nginx and unbound,
/// often not on a user's PATH).
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    ["/usr/sbin", "/usr/local/sbin", "/sbin"]
        .iter()
        .map(PathBuf::from)
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Starts nginx (`bin`) in the controller namespace with `servers` (server blocks) as its http
/// section's content; its files (config, logs, temp paths) live in `dir`. One process
/// (`master_process off`), so stopping it stops the server.
pub fn start_nginx(lab: &Lab, bin: &Path, name: &str, dir: &Path, servers: &str) -> LabServer {
    let d = dir.display();
    let access_log = format!("  access_log {d}/{name}-access.log;\n{servers}");
    let conf = nginx_config(dir, name, &access_log);
    let conf_path = dir.join(format!("{name}.conf"));
    std::fs::write(&conf_path, conf).unwrap_or_else(|e| panic!("{}: {e}", conf_path.display()));
    let error_log = dir.join(format!("{name}-error.log"));
    lab.spawn_server(
        name,
        CONTROLLER_NS,
        bin,
        &[
            "-p",
            &d.to_string(),
            "-c",
            &conf_path.display().to_string(),
            "-e",
            &error_log.display().to_string(),
        ],
    )
    .expect("start nginx")
}

/// The sum of every sample of metric `name` (whatever its labels) in a Prometheus text
/// exposition; 0 when there is none.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// The central interval holding a Binomial(n, p) count with probability at least `conf`,
/// as loss ratios: (lo, hi) with P(X < lo·n) <= (1-conf)/2 and P(X > hi·n) <= (1-conf)/2.
///
/// Exact (summed in log space), so the test's flake rate is what `conf` says, not what a normal
/// approximation suggests.
pub fn binomial_interval(n: u32, p: f64, conf: f64) -> (f64, f64) {
    let tail = (1.0 - conf) / 2.0;
    let ln_choose = |k: u32| -> f64 { ln_fact(n) - ln_fact(k) - ln_fact(n - k) };
    let pmf =
        |k: u32| (ln_choose(k) + f64::from(k) * p.ln() + f64::from(n - k) * (1.0 - p).ln()).exp();
    let mut lo = 0;
    let mut acc = 0.0;
    while lo < n && acc + pmf(lo) <= tail {
        acc += pmf(lo);
        lo += 1;
    }
    let mut hi = n;
    let mut acc = 0.0;
    while hi > 0 && acc + pmf(hi) <= tail {
        acc += pmf(hi);
        hi -= 1;
    }
    (f64::from(lo) / f64::from(n), f64::from(hi) / f64::from(n))
}

fn ln_fact(n: u32) -> f64 {
    (2..=n).map(|i| f64::from(i).ln()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_adds_the_series_of_one_metric() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\na_total{node=\"x y\"} 2\n\
                    a_total{node=\"z\"} 3.5\na_total_other 7\nb 1\n# EOF\n";
        assert_eq!(metric_sum(text, "a_total"), 5.5);
        assert_eq!(metric_sum(text, "b"), 1.0);
        assert_eq!(metric_sum(text, "c"), 0.0);
    }

    #[test]
    fn interval_brackets_the_mean_and_narrows_with_n() {
        let (lo, hi) = binomial_interval(600, 0.2, 0.999);
        assert!(lo < 0.2 && hi > 0.2);
        // Normal approximation: 0.2 ± 3.29·sqrt(0.16/600) = [0.146, 0.254].
        assert!(
            (lo - 0.146).abs() < 0.01 && (hi - 0.254).abs() < 0.01,
            "{lo} {hi}"
        );
        let (lo2, hi2) = binomial_interval(6000, 0.2, 0.999);
        assert!(lo2 > lo && hi2 < hi);
    }
}
