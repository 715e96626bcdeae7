//! A small chart kit for the page: scales, ticks, axes and number formats, written out as SVG
//! text by hand.
//!
//! Why by hand rather than a crate: the page needs five kinds of marks (points, step lines,
//! polylines, bars, bands) on linear, log and time axes, each mark carrying `data-*`
//! attributes a browser test can find, `<title>` tooltips and CSS classes the page's print
//! style can address. The maintained Rust charting crate (`plotters`, with its SVG backend)
//! draws through a backend that writes its own elements: it cannot attach attributes to a
//! point, styles with inline attributes only, and brings font and image dependencies the page
//! does not use. Vendoring a JavaScript chart library would need a script, which the page
//! must run without (and its Content-Security-Policy forbids). What is here is a few hundred
//! lines with unit tests, and every byte it writes is escaped text we chose.
//!
//! Output size is kept small: coordinates are written with one decimal (a tenth of a pixel at
//! the page's scale), data values in full (`{:?}`, the shortest text that reads back exactly).

use k8s_openapi::jiff::Timestamp;
use std::fmt::Write;

/// `text` safe inside an HTML or SVG element or a quoted attribute value.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A coordinate as written into the SVG: one decimal, no `-0.0`. In whole tenths: a page has
/// thousands of coordinates, and float formatting with a precision was a third of its render.
pub fn c(x: f64) -> String {
    let tenths = (x * 10.0).round();
    if !tenths.is_finite() || tenths.abs() >= 1e15 {
        // not a coordinate anything draws at (NaN, infinite, beyond any screen)
        return format!("{:.1}", tenths / 10.0);
    }
    let tenths = tenths as i64;
    let (whole, tenth) = (tenths / 10, (tenths % 10).abs());
    match (tenth, tenths < 0 && whole == 0) {
        (0, _) => whole.to_string(),
        (_, true) => format!("-0.{tenth}"),
        (_, false) => format!("{whole}.{tenth}"),
    }
}

/// A data value for a `data-*` attribute: the shortest text that reads back exactly.
pub fn data(x: f64) -> String {
    format!("{x:?}")
}

/// A number for people: about three significant digits, plain or with an exponent
/// (`0.0523`, `1240`, `3.1e-5`).
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return if x.is_nan() {
            "–".into()
        } else {
            "∞".into()
        };
    }
    if x == 0.0 {
        return "0".into();
    }
    let magnitude = x.abs().log10().floor() as i32;
    if !(-3..6).contains(&magnitude) {
        let text = format!("{x:.2e}");
        // 3.10e-5 -> 3.1e-5, 1.00e7 -> 1e7
        return match text.split_once('e') {
            Some((m, e)) => {
                let m = m.trim_end_matches('0').trim_end_matches('.');
                format!("{m}e{e}")
            }
            None => text,
        };
    }
    let decimals = (2 - magnitude).max(0) as usize;
    let text = format!("{x:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// An integer with thousands separators (`12,345`).
pub fn int(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// A rate as a percentage with about two significant digits (`12%`, `3.4%`, `0.052%`).
pub fn percent(rate: f64) -> String {
    let p = rate * 100.0;
    if p >= 10.0 {
        format!("{p:.0}%")
    } else if p >= 1.0 {
        format!("{}%", format!("{p:.1}").trim_end_matches(".0"))
    } else {
        format!("{}%", num(p))
    }
}

/// A duration for people (`3.2 s`, `4 min 10 s`, `2 h 5 min`).
pub fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "–".into();
    }
    if seconds < 60.0 {
        return format!("{} s", num(seconds));
    }
    let whole = seconds.round() as i64;
    let (h, m, s) = (whole / 3600, whole % 3600 / 60, whole % 60);
    match (h, m, s) {
        (0, m, 0) => format!("{m} min"),
        (0, m, s) => format!("{m} min {s} s"),
        (h, 0, _) if h >= 1 => format!("{h} h"),
        (h, m, _) => format!("{h} h {m} min"),
    }
}

/// A 1-2-2.5-5 step giving about `target` intervals over `span`.
pub fn nice_step(span: f64, target: usize) -> f64 {
    let raw = span / target.max(1) as f64;
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    let normalized = raw / magnitude;
    let nice = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .find(|n| normalized <= *n + 1e-9)
        .unwrap_or(10.0);
    nice * magnitude
}

/// How a value maps onto the page: linear or logarithmic, from a domain onto pixels.
#[derive(Clone, Debug)]
pub struct Scale {
    lo: f64,
    hi: f64,
    from: f64,
    to: f64,
    log: bool,
    ticks: Vec<f64>,
    /// Tick labels' decimals (linear) or none (log: each label as [`num`] writes it).
    step: f64,
}

impl Scale {
    /// A linear scale over `lo..hi` widened to whole ticks (about `target` of them), onto
    /// `from..to` pixels. `integer`: ticks at whole numbers only (generations).
    pub fn linear(lo: f64, hi: f64, from: f64, to: f64, target: usize, integer: bool) -> Scale {
        let (lo, hi) = widen(lo, hi);
        let mut step = nice_step(hi - lo, target);
        if integer {
            step = step.max(1.0).round();
        }
        let lo_nice = (lo / step).floor() * step;
        let hi_nice = (hi / step).ceil() * step;
        let count = ((hi_nice - lo_nice) / step).round() as i64;
        let ticks = (0..=count.min(100))
            .map(|i| lo_nice + i as f64 * step)
            .collect();
        Scale {
            lo: lo_nice,
            hi: hi_nice,
            from,
            to,
            log: false,
            ticks,
            step,
        }
    }

    /// A linear scale over exactly `lo..hi` (no widening to ticks), with ticks inside it.
    pub fn linear_exact(lo: f64, hi: f64, from: f64, to: f64, target: usize) -> Scale {
        let (lo, hi) = widen(lo, hi);
        let step = nice_step(hi - lo, target);
        let first = (lo / step - 1e-9).ceil() as i64;
        let last = (hi / step + 1e-9).floor() as i64;
        let ticks = (first..=last.min(first + 100))
            .map(|i| i as f64 * step)
            .collect();
        Scale {
            lo,
            hi,
            from,
            to,
            log: false,
            ticks,
            step,
        }
    }

    /// Generations: a linear scale over exactly `lo..hi` with ticks at whole numbers.
    pub fn generations(lo: f64, hi: f64, from: f64, to: f64) -> Scale {
        let mut scale = Scale::linear_exact(lo, hi, from, to, 8);
        // 1, 2, 5, 10, 20, 25, ...: a step of 2.5 (or less than 1) is not whole
        let step = match scale.step {
            s if s < 1.0 => 1.0,
            s if s.fract() != 0.0 => s.floor(),
            s => s,
        };
        let (first, last) = ((lo / step).ceil() as i64, (hi / step).floor() as i64);
        scale.step = step;
        scale.ticks = (first..=last.min(first + 100))
            .map(|i| i as f64 * step)
            .collect();
        scale
    }

    /// A log10 scale over `lo..hi` (both > 0) with a margin around it, ticks at the powers
    /// of ten inside (every second or third one when there are many; 3 times them too when
    /// there are two, 2 and 5 times when there is one).
    pub fn log(lo: f64, hi: f64, from: f64, to: f64) -> Scale {
        let (lo, hi) = (lo / 1.3, hi * 1.3);
        let (first, last) = (lo.log10().ceil() as i32, hi.log10().floor() as i32);
        let every = ((last - first + 1).max(1) as usize).div_ceil(6);
        let mut ticks: Vec<f64> = (first..=last)
            .filter(|e| ((e - first) as usize).is_multiple_of(every))
            .map(|e| 10f64.powi(e))
            .collect();
        let between: &[f64] = match ticks.len() {
            0 | 1 => &[1.0, 2.0, 5.0],
            2 => &[1.0, 3.0],
            _ => &[],
        };
        if !between.is_empty() {
            ticks = (first - 1..=last)
                .flat_map(|e| between.iter().map(move |m| m * 10f64.powi(e)))
                .filter(|t| (lo..=hi).contains(t))
                .collect();
        }
        Scale {
            lo,
            hi,
            from,
            to,
            log: true,
            ticks,
            step: 0.0,
        }
    }

    /// Log when the positive values span more than a decade, linear from zero otherwise.
    pub fn auto(values: &[f64], from: f64, to: f64, target: usize) -> Scale {
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if lo > 0.0 && hi.is_finite() && hi / lo > 10.0 {
            Scale::log(lo, hi, from, to)
        } else if hi.is_finite() {
            Scale::linear(lo.min(0.0), hi, from, to, target, false)
        } else {
            Scale::linear(0.0, 1.0, from, to, target, false)
        }
    }

    pub fn is_log(&self) -> bool {
        self.log
    }

    pub fn domain(&self) -> (f64, f64) {
        (self.lo, self.hi)
    }

    /// The pixel of `x` (values outside the domain map outside the range).
    pub fn at(&self, x: f64) -> f64 {
        let f = if self.log {
            (x.max(f64::MIN_POSITIVE).log10() - self.lo.log10())
                / (self.hi.log10() - self.lo.log10())
        } else {
            (x - self.lo) / (self.hi - self.lo)
        };
        self.from + f * (self.to - self.from)
    }

    /// The ticks with their labels.
    pub fn ticks(&self, label: impl Fn(f64) -> String) -> Vec<(f64, String)> {
        self.ticks.iter().map(|&t| (t, label(t))).collect()
    }

    /// A tick's label: decimals enough for the step (linear), [`num`] otherwise.
    pub fn label(&self, x: f64) -> String {
        if self.log || self.step == 0.0 {
            return num(x);
        }
        let x = if (x / self.step).abs() < 1e-9 { 0.0 } else { x };
        let abs = x.abs();
        if abs != 0.0 && !(1e-3..1e6).contains(&abs) {
            return num(x);
        }
        let decimals = (-self.step.log10().floor()).clamp(0.0, 6.0) as usize;
        let decimals = if (self.step * 10f64.powi(decimals as i32)).fract().abs() > 1e-6 {
            decimals + 1
        } else {
            decimals
        };
        format!("{x:.decimals$}")
    }
}

/// `lo..hi` with some width (a single value gets one around it).
fn widen(lo: f64, hi: f64) -> (f64, f64) {
    if !(lo.is_finite() && hi.is_finite()) {
        return (0.0, 1.0);
    }
    if hi > lo {
        (lo, hi)
    } else if lo == 0.0 {
        (0.0, 1.0)
    } else {
        let d = lo.abs() * 0.1;
        (lo - d, hi + d)
    }
}

/// Time ticks: a step from a list of round durations, ticks at its UTC multiples, labels as
/// wide as the step needs (`18:05:30`, `18:05`, `12-07 18:00`).
pub fn time_ticks(lo: f64, hi: f64, target: usize) -> Vec<(f64, String)> {
    const STEPS: [f64; 19] = [
        1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
        10800.0, 21600.0, 43200.0, 86400.0, 604800.0,
    ];
    let span = (hi - lo).max(1.0);
    let step = STEPS
        .into_iter()
        .find(|s| span / s <= target as f64)
        .unwrap_or(86400.0 * ((span / target as f64 / 86400.0).ceil()));
    let days = hi - lo > 86400.0 || day_of(lo) != day_of(hi);
    let format = match (step < 60.0, days, step >= 86400.0) {
        (_, _, true) => "%m-%d",
        (true, false, _) => "%H:%M:%S",
        (false, false, _) => "%H:%M",
        (_, true, _) => "%m-%d %H:%M",
    };
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last.min(first + 100))
        .filter_map(|i| {
            let at = i as f64 * step;
            let ts = Timestamp::from_second(at as i64).ok()?;
            Some((at, ts.strftime(format).to_string()))
        })
        .collect()
}

fn day_of(seconds: f64) -> i64 {
    (seconds / 86400.0).floor() as i64
}

/// A chart's frame: the SVG's size and the plot area's margins, in SVG units (the page shows
/// one unit as about one CSS pixel on a laptop).
#[derive(Clone, Copy, Debug)]
pub struct Frame {
    pub width: f64,
    pub height: f64,
    pub left: f64,
    pub right: f64,
    pub top: f64,
    pub bottom: f64,
}

impl Frame {
    pub fn new(width: f64, height: f64) -> Frame {
        Frame {
            width,
            height,
            left: 56.0,
            right: 14.0,
            top: 12.0,
            bottom: 38.0,
        }
    }
    pub fn x0(&self) -> f64 {
        self.left
    }
    pub fn x1(&self) -> f64 {
        self.width - self.right
    }
    pub fn y0(&self) -> f64 {
        self.height - self.bottom
    }
    pub fn y1(&self) -> f64 {
        self.top
    }
}

/// An SVG being written: axes first, then the marks, clipped to the plot area.
pub struct Chart {
    frame: Frame,
    id: String,
    class: &'static str,
    body: String,
    marks: String,
}

impl Chart {
    /// `id`: unique on the page (the clip path's id is made of it).
    pub fn new(id: &str, frame: Frame) -> Chart {
        Chart {
            frame,
            id: id.to_string(),
            class: "chart",
            body: String::new(),
            marks: String::new(),
        }
    }

    pub fn frame(&self) -> Frame {
        self.frame
    }

    /// The `<svg>`'s classes (`chart` and more, for the page's style).
    pub fn class(&mut self, class: &'static str) {
        self.class = class;
    }

    /// Grid lines, tick marks and labels for both axes, and the axes' titles.
    pub fn axes(
        &mut self,
        x: &Scale,
        x_ticks: &[(f64, String)],
        y: &Scale,
        y_ticks: &[(f64, String)],
        x_title: &str,
        y_title: &str,
    ) {
        let f = self.frame;
        let b = &mut self.body;
        b.push_str("<g class=\"grid\">");
        for (v, _) in y_ticks {
            let py = y.at(*v);
            let _ = write!(b, "<path d=\"M{} {}H{}\"/>", c(f.x0()), c(py), c(f.x1()));
        }
        for (v, _) in x_ticks {
            let px = x.at(*v);
            let _ = write!(b, "<path d=\"M{} {}V{}\"/>", c(px), c(f.y0()), c(f.y1()));
        }
        b.push_str("</g><g class=\"axis\">");
        let _ = write!(
            b,
            "<path d=\"M{} {}V{}H{}\"/>",
            c(f.x0()),
            c(f.y1()),
            c(f.y0()),
            c(f.x1())
        );
        for (v, label) in y_ticks {
            let py = y.at(*v);
            let _ = write!(
                b,
                "<text class=\"tick y\" x=\"{}\" y=\"{}\">{}</text>",
                c(f.x0() - 6.0),
                c(py + 3.5),
                escape(label)
            );
        }
        for (v, label) in x_ticks {
            let px = x.at(*v);
            let _ = write!(
                b,
                "<text class=\"tick x\" x=\"{}\" y=\"{}\">{}</text>",
                c(px),
                c(f.y0() + 14.0),
                escape(label)
            );
        }
        let _ = write!(
            b,
            "<text class=\"title x\" x=\"{}\" y=\"{}\">{}</text>",
            c((f.x0() + f.x1()) / 2.0),
            c(f.height - 6.0),
            escape(x_title)
        );
        let _ = write!(
            b,
            "<text class=\"title y\" transform=\"translate(12 {}) rotate(-90)\">{}</text>",
            c((f.y0() + f.y1()) / 2.0),
            escape(y_title)
        );
        b.push_str("</g>");
    }

    /// A mark inside the plot area (clipped to it); the caller wrote it escaped.
    pub fn mark(&mut self, svg: &str) {
        self.marks.push_str(svg);
    }

    /// Something drawn outside the clipped area (labels in the margins).
    pub fn overlay(&mut self, svg: &str) {
        self.body.push_str(svg);
    }

    /// The `<svg>` element; `label` says what it shows, for screen readers.
    pub fn finish(self, label: &str) -> String {
        let f = self.frame;
        let clip = format!("clip-{}", self.id);
        format!(
            "<svg class=\"{class}\" id=\"svg-{id}\" viewBox=\"0 0 {w} {h}\" role=\"img\" \
             aria-label=\"{label}\"><defs><clipPath id=\"{clip}\"><rect x=\"{x}\" y=\"{y}\" \
             width=\"{cw}\" height=\"{ch}\"/></clipPath></defs>{body}<g clip-path=\"url(#{clip})\">\
             {marks}</g></svg>",
            id = self.id,
            class = self.class,
            w = c(f.width),
            h = c(f.height),
            label = escape(label),
            x = c(f.x0() - 4.0),
            y = c(f.y1() - 4.0),
            cw = c(f.x1() - f.x0() + 8.0),
            ch = c(f.y0() - f.y1() + 8.0),
            body = self.body,
            marks = self.marks,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_that_could_open_markup() {
        assert_eq!(
            escape(r#"<script>"a" & 'b'</script>"#),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn numbers_read_as_people_write_them() {
        assert_eq!(num(0.052341), "0.0523");
        assert_eq!(num(1240.4), "1240");
        assert_eq!(num(3.1e-5), "3.1e-5");
        assert_eq!(num(1.0e7), "1e7");
        assert_eq!(num(2.0), "2");
        assert_eq!(num(-0.5), "-0.5");
        assert_eq!(int(1234567), "1,234,567");
        assert_eq!(int(-1000), "-1,000");
        assert_eq!(int(999), "999");
        assert_eq!(percent(0.128), "13%");
        assert_eq!(percent(0.034), "3.4%");
        assert_eq!(percent(0.01), "1%");
        assert_eq!(percent(0.00052), "0.052%");
        assert_eq!(duration(3.24), "3.24 s");
        assert_eq!(duration(250.0), "4 min 10 s");
        assert_eq!(duration(7500.0), "2 h 5 min");
        assert_eq!(c(-0.04), "0");
        assert_eq!(c(12.345), "12.3");
        assert_eq!(c(7.0), "7");
        assert_eq!(c(-0.46), "-0.5");
        assert_eq!(c(-12.96), "-13");
        assert_eq!(c(-1.54), "-1.5");
    }

    #[test]
    fn linear_scales_widen_to_nice_ticks() {
        let s = Scale::linear(0.0, 0.87, 0.0, 100.0, 5, false);
        assert_eq!(s.domain(), (0.0, 1.0));
        let labels: Vec<String> = s.ticks(|t| s.label(t)).into_iter().map(|t| t.1).collect();
        assert_eq!(labels, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        assert_eq!(s.at(0.5), 50.0);
        let g = Scale::linear(0.0, 3.0, 0.0, 1.0, 8, true);
        let labels: Vec<String> = g.ticks(|t| g.label(t)).into_iter().map(|t| t.1).collect();
        assert_eq!(labels, ["0", "1", "2", "3"], "generations are whole");
        let q = Scale::linear(0.0, 1.0, 0.0, 1.0, 4, false);
        assert_eq!(q.label(0.25), "0.25", "a 2.5 step keeps its second decimal");
    }

    #[test]
    fn auto_scales_go_log_beyond_a_decade() {
        let s = Scale::auto(&[5.0, 0.02], 200.0, 0.0, 5);
        assert!(s.is_log());
        let (lo, hi) = s.domain();
        assert!(lo < 0.02 && hi > 5.0 && lo > 0.01 && hi < 10.0, "{lo} {hi}");
        assert!(s.at(0.02) < 195.0 && s.at(5.0) > 5.0, "points off the axes");
        let labels: Vec<String> = s.ticks(|t| s.label(t)).into_iter().map(|t| t.1).collect();
        assert_eq!(labels, ["0.03", "0.1", "0.3", "1", "3"]);
        let one = Scale::log(0.3, 4.0, 100.0, 0.0);
        let labels: Vec<String> = one
            .ticks(|t| one.label(t))
            .into_iter()
            .map(|t| t.1)
            .collect();
        assert_eq!(
            labels,
            ["0.5", "1", "2", "5"],
            "one power of ten: 2 and 5 times too"
        );
        assert!(!Scale::auto(&[5.0, 1.0], 200.0, 0.0, 5).is_log());
        assert!(
            !Scale::auto(&[5.0, 0.0], 200.0, 0.0, 5).is_log(),
            "zero has no log"
        );
    }

    #[test]
    fn time_ticks_fit_the_span() {
        let t0 = 1_796_580_000.0; // 2026-12-06T18:00:00Z
        let ticks = time_ticks(t0, t0 + 300.0, 6);
        assert_eq!(ticks.first().unwrap().1, "18:00");
        assert_eq!(ticks.len(), 6);
        let fine = time_ticks(t0 + 1.0, t0 + 40.0, 6);
        assert_eq!(fine[0].1, "18:00:10");
        let days = time_ticks(t0, t0 + 3.0 * 86400.0, 6);
        assert!(days[0].1.contains('-'), "{days:?}");
    }
}
