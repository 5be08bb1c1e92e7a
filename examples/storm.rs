//! Reproduces the retry-storm table of Marc Brooker's "Exponential Backoff
//! And Jitter" with this project's backoff schedules, and draws it.
//!
//!     cargo run --release --example storm                  # table on stdout
//!     cargo run --release --example storm -- docs/storm.svg   # and the plot

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Parser;
use recovery_suite::say;
use recovery_suite::storm::{Config, Outcome, Strategy, simulate};

const CLIENTS: [u32; 8] = [10, 25, 50, 75, 100, 125, 150, 200];

/// The retry-storm simulation: calls and completion time of each backoff
/// strategy as clients contend for one resource.
#[derive(Parser)]
struct Args {
    /// Also draw the table as an SVG plot, written to this file.
    svg: Option<PathBuf>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let config = Config::default();
    let mut table: Vec<(Strategy, Vec<Outcome>)> = Vec::new();
    for strategy in Strategy::ALL {
        table.push((
            strategy,
            CLIENTS
                .iter()
                .map(|&n| simulate(n, strategy, &config))
                .collect(),
        ));
    }

    let mut text = format!(
        "work {:?} per write, base {:?}, cap {:?}, seed {}\n\n| clients |",
        config.work, config.base, config.cap, config.seed
    );
    for (s, _) in &table {
        write!(text, " {} calls | {} time (s) |", s.name(), s.name())?;
    }
    text.push_str("\n|---:|");
    for _ in &table {
        text.push_str("---:|---:|");
    }
    for (i, n) in CLIENTS.iter().enumerate() {
        write!(text, "\n| {n} |")?;
        for (_, outcomes) in &table {
            let o = outcomes[i];
            write!(text, " {} | {:.2} |", o.calls, o.completion.as_secs_f64())?;
        }
    }
    say!("{text}");

    if let Some(path) = &args.svg {
        std::fs::write(path, svg(&table))
            .map_err(|e| format!("cannot write the plot to {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// A panel: its title, the value it plots, and whether on a log scale.
type Panel = (&'static str, fn(&Outcome) -> f64, bool);

const COLORS: [&str; 5] = ["#888888", "#d62728", "#2ca02c", "#ff7f0e", "#1f77b4"];

/// Two panels: total calls, and completion time (log scale), against clients.
fn svg(table: &[(Strategy, Vec<Outcome>)]) -> String {
    let (w, h, pad) = (460.0, 320.0, 50.0);
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="12">"#,
        2.0 * w + 20.0,
        h + 60.0
    );
    let panels: [Panel; 2] = [
        ("total calls", |o| o.calls as f64, false),
        (
            "completion time, s (log)",
            |o| o.completion.as_secs_f64(),
            true,
        ),
    ];
    for (p, (title, value, log)) in panels.iter().enumerate() {
        let x0 = p as f64 * (w + 20.0);
        let values: Vec<f64> = table
            .iter()
            .flat_map(|(_, os)| os.iter().map(value))
            .collect();
        let max = values.iter().cloned().fold(f64::MIN, f64::max);
        let min = values.iter().cloned().fold(f64::MAX, f64::min).max(1e-3);
        let scale = |v: f64| {
            let t = if *log {
                (v.max(min).ln() - min.ln()) / (max.ln() - min.ln())
            } else {
                v / max
            };
            h - pad - t * (h - 2.0 * pad)
        };
        let max_clients = *CLIENTS.last().unwrap() as f64;
        let xs = |n: u32| x0 + pad + n as f64 / max_clients * (w - 2.0 * pad);
        let _ = write!(
            out,
            r#"<text x="{}" y="20" font-weight="bold">{title}</text><line x1="{}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{}" y1="{}" x2="{}" y2="{}" stroke="black"/><text x="{}" y="{}">clients</text><text x="{}" y="{}">{:.0}</text><text x="{}" y="{}">{}</text>"#,
            x0 + pad,
            x0 + pad,
            h - pad,
            x0 + w - pad,
            h - pad,
            x0 + pad,
            pad,
            x0 + pad,
            h - pad,
            x0 + w / 2.0,
            h - pad + 30.0,
            x0 + 2.0,
            pad,
            max,
            x0 + w - pad - 20.0,
            h - pad + 15.0,
            max_clients
        );
        let bottom = if *log {
            format!("{min:.2}")
        } else {
            "0".into()
        };
        let _ = write!(
            out,
            r#"<text x="{}" y="{}">{bottom}</text>"#,
            x0 + 2.0,
            h - pad
        );
        // Drawn last to first, the first (no backoff) dashed on top: its
        // calls are the same as exponential's.
        for (i, (strategy, outcomes)) in table.iter().enumerate().rev() {
            let points: Vec<String> = outcomes
                .iter()
                .map(|o| format!("{:.1},{:.1}", xs(o.clients), scale(value(o))))
                .collect();
            let dash = if i == 0 {
                r#" stroke-dasharray="6,4""#
            } else {
                ""
            };
            let _ = write!(
                out,
                r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#,
                COLORS[i],
                points.join(" ")
            );
            if p == 0 {
                let _ = write!(
                    out,
                    r#"<text x="{}" y="{}" fill="{}">{}</text>"#,
                    x0 + pad + 10.0,
                    pad + 15.0 * i as f64,
                    COLORS[i],
                    strategy.name()
                );
            }
        }
    }
    out.push_str("</svg>\n");
    out
}
