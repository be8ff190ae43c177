//! The SVG chart: throughput and fresh-connect latency of each path, as bars
//! next to the direct baseline and the bare QUIC relay.

use crate::report::Report;
use plotters::prelude::*;
use std::path::Path;

const COLORS: [RGBColor; 4] = [
    RGBColor(120, 120, 120),
    RGBColor(31, 119, 180),
    RGBColor(230, 130, 30),
    RGBColor(150, 190, 220),
];
const SERIES: [&str; 4] = ["direct", "exitpool", "tinyproxy", "bare QUIC relay"];
/// Where a group's first bar starts, and each bar's slot and width.
const BAR_START: f64 = 0.1;
const BAR_SLOT: f64 = 0.2;
const BAR_WIDTH: f64 = 0.18;

/// Groups of bars: (group label, one value per series).
type Groups = Vec<(String, [Option<f64>; 4])>;

pub fn draw(path: &Path, report: &Report) -> anyhow::Result<()> {
    let pick = |scenario: &str, metric: &str, label: &str| {
        report.find(scenario, metric).map(|r| {
            let values = [r.direct, r.exitpool, r.tinyproxy, r.bare_relay];
            (label.to_owned(), values)
        })
    };
    let throughput: Groups = [
        pick("bulk", "download throughput", "bulk download"),
        pick("bulk", "upload throughput", "bulk upload"),
        pick("fanout", "aggregate throughput", "fan-out aggregate"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let latency: Groups = [
        pick("connect", "fresh connect + 1 KiB, p50", "p50"),
        pick("connect", "fresh connect + 1 KiB, p99", "p99"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let root = SVGBackend::new(path, (1100, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let (left, right) = root.split_horizontally(560);
    bars(
        &left,
        "Throughput (MB/s, higher is better)",
        "MB/s",
        &throughput,
    )?;
    bars(
        &right,
        "Fresh CONNECT + 1 KiB (ms, lower is better)",
        "ms",
        &latency,
    )?;
    root.present().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(())
}

fn bars(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    title: &str,
    unit: &str,
    groups: &Groups,
) -> anyhow::Result<()> {
    let err = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("{e:?}");
    let max = groups
        .iter()
        .flat_map(|(_, v)| v.iter().flatten())
        .fold(0.0f64, |a, &b| a.max(b));
    // Headroom above the tallest bar: group names, then the legend above them.
    let top = if max > 0.0 { max * 1.4 } else { 1.0 };
    let n = groups.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(20)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..n, 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(unit)
        .draw()
        .map_err(err)?;
    for (s, name) in SERIES.iter().enumerate() {
        let color = COLORS[s];
        let rects: Vec<_> = groups
            .iter()
            .enumerate()
            .filter_map(|(g, (_, values))| {
                values[s].map(|v| {
                    let x0 = g as f64 + BAR_START + s as f64 * BAR_SLOT;
                    Rectangle::new([(x0, 0.0), (x0 + BAR_WIDTH, v)], color.filled())
                })
            })
            .collect();
        if rects.is_empty() {
            continue;
        }
        chart
            .draw_series(rects)
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        let labels: Vec<_> = groups
            .iter()
            .enumerate()
            .filter_map(|(g, (_, values))| {
                values[s].map(|v| {
                    let x0 = g as f64 + BAR_START + s as f64 * BAR_SLOT;
                    let text = if v >= 100.0 {
                        format!("{v:.0}")
                    } else {
                        format!("{v:.2}")
                    };
                    Text::new(text, (x0, v + top * 0.02), ("sans-serif", 12))
                })
            })
            .collect();
        chart.draw_series(labels).map_err(err)?;
    }
    let names: Vec<_> = groups
        .iter()
        .enumerate()
        .map(|(g, (label, _))| {
            Text::new(
                label.clone(),
                (g as f64 + 0.3, top * 0.75),
                ("sans-serif", 14),
            )
        })
        .collect();
    chart.draw_series(names).map_err(err)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}
