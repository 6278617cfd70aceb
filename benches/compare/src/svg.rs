//! The table as an SVG picture: one grouped bar chart per metric (cases along the x axis, one
//! bar per client), written by hand so the crate needs no plotting library.

use std::fmt::Write;

use crate::model::ClientKind;
use crate::stats::{is_throughput_case, Row, Stat};

const WIDTH: f64 = 900.0;
const PANEL_HEIGHT: f64 = 260.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

fn color(c: ClientKind) -> &'static str {
    match c {
        ClientKind::Librdkafka => "#4e79a7",
        ClientKind::LibrdkafkaFuture => "#a0cbe8",
        ClientKind::Rskafka => "#f28e2b",
        ClientKind::Purekafka => "#59a14f",
        ClientKind::RdkafkaPerformance => "#2b4a6f",
        ClientKind::RdkafkaPerformanceCopy => "#6f8fb5",
        ClientKind::Krafka => "#b07aa1",
    }
}

struct Panel {
    title: &'static str,
    /// (case, [(client, median, min, max)])
    groups: Vec<(String, Vec<(ClientKind, Stat)>)>,
}

fn panel(rows: &[Row], title: &'static str, pick: impl Fn(&Row) -> Option<Stat>) -> Panel {
    let mut groups: Vec<(String, Vec<(ClientKind, Stat)>)> = Vec::new();
    for r in rows {
        let Some(v) = pick(r) else { continue };
        match groups.iter_mut().find(|(c, _)| *c == r.case) {
            Some((_, bars)) => bars.push((r.client, v)),
            None => groups.push((r.case.clone(), vec![(r.client, v)])),
        }
    }
    Panel { title, groups }
}

/// A "nice" axis maximum at or above `max`: 1, 2 or 5 times a power of ten.
fn nice_max(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(max.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= max {
            return m * p;
        }
    }
    10.0 * p
}

fn short(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.0}k", x / 1e3)
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn draw_panel(out: &mut String, p: &Panel, y0: f64) {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = PANEL_HEIGHT - TOP - BOTTOM;
    let max = p
        .groups
        .iter()
        .flat_map(|(_, b)| b.iter().map(|(_, s)| s.max.max(s.median)))
        .fold(0.0, f64::max);
    let top = nice_max(max);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{}" font-size="15" font-weight="bold">{}</text>"#,
        y0 + 22.0,
        escape(p.title)
    );
    // Grid lines and y labels.
    for i in 0..=4 {
        let v = top * i as f64 / 4.0;
        let y = y0 + TOP + plot_h - plot_h * i as f64 / 4.0;
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            short(v)
        );
    }
    if p.groups.is_empty() {
        return;
    }
    let group_w = plot_w / p.groups.len() as f64;
    for (g, (case, bars)) in p.groups.iter().enumerate() {
        let gx = LEFT + group_w * g as f64;
        let bar_w = (group_w * 0.8 / bars.len().max(1) as f64).min(60.0);
        let start = gx + (group_w - bar_w * bars.len() as f64) / 2.0;
        for (b, (client, s)) in bars.iter().enumerate() {
            let h = plot_h * s.median / top;
            let x = start + bar_w * b as f64;
            let y = y0 + TOP + plot_h - h;
            let _ = writeln!(
                out,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{}: {} (min {}, max {})</title></rect>"#,
                bar_w - 2.0,
                color(*client),
                client.name(),
                short(s.median),
                short(s.min),
                short(s.max)
            );
            // Spread of the repetitions as a whisker.
            if s.max > s.min {
                let cx = x + (bar_w - 2.0) / 2.0;
                let ylo = y0 + TOP + plot_h - plot_h * s.min / top;
                let yhi = y0 + TOP + plot_h - plot_h * s.max / top;
                let _ = writeln!(
                    out,
                    r##"<line x1="{cx:.1}" y1="{ylo:.1}" x2="{cx:.1}" y2="{yhi:.1}" stroke="#333"/>"##
                );
            }
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{}</text>"#,
                x + (bar_w - 2.0) / 2.0,
                y - 3.0,
                short(s.median)
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
            gx + group_w / 2.0,
            y0 + TOP + plot_h + 18.0,
            escape(case)
        );
    }
}

/// The SVG document for `rows`; each `subtitle` line (date and command, broker, machine)
/// goes under the title.
pub fn render(rows: &[Row], subtitle: &[String]) -> String {
    let panels = [
        panel(rows, "Throughput, records/s (higher is better)", |r| {
            r.records_per_s.filter(|_| is_throughput_case(&r.case))
        }),
        panel(rows, "Client CPU, µs per record (lower is better)", |r| {
            r.cpu_us_per_record.filter(|_| r.case != "first-record")
        }),
        panel(rows, "Peak RSS, MiB (lower is better)", |r| r.peak_rss_mib),
        panel(
            rows,
            "Produce latency p99 at a fixed rate, ms (lower is better)",
            |r| r.p99_ms,
        ),
        panel(
            rows,
            "Time from subscribe to first record, ms (lower is better)",
            |r| r.first_record_ms.filter(|_| r.case == "first-record"),
        ),
    ];
    let panels: Vec<&Panel> = panels.iter().filter(|p| !p.groups.is_empty()).collect();
    let legend_h = 40.0;
    let head = 32.0 + 15.0 * subtitle.len() as f64;
    let height = head + legend_h + PANEL_HEIGHT * panels.len() as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="24" font-size="18" font-weight="bold">purekafka vs librdkafka vs rskafka</text>"#
    );
    for (i, line) in subtitle.iter().enumerate() {
        let _ = writeln!(
            out,
            r##"<text x="{LEFT}" y="{}" font-size="11" fill="#555">{}</text>"##,
            42.0 + 15.0 * i as f64,
            escape(line)
        );
    }
    let mut clients: Vec<ClientKind> = rows.iter().map(|r| r.client).collect();
    clients.sort();
    clients.dedup();
    for (i, c) in clients.iter().enumerate() {
        let x = LEFT + 170.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="{}" width="14" height="14" fill="{}"/><text x="{}" y="{}" font-size="12">{}</text>"#,
            head + 8.0,
            color(*c),
            x + 20.0,
            head + 20.0,
            c.name()
        );
    }
    for (i, p) in panels.iter().enumerate() {
        draw_panel(&mut out, p, head + legend_h + PANEL_HEIGHT * i as f64);
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_axis_maxima() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(3.0), 5.0);
        assert_eq!(nice_max(120.0), 200.0);
        assert_eq!(nice_max(1000.0), 1000.0);
    }

    #[test]
    fn empty_rows_still_make_a_document() {
        let svg = render(&[], &["x < y".to_string()]);
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("x &lt; y"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }
}
