//! What the user reads: the progress of a large copy, the final line, how to open a database.

use super::files::Report;
use std::path::Path;
use std::time::{Duration, Instant};

/// Bytes for people: `512 B`, `2.9 KiB`, `1.2 GiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// At most this often on a terminal (one line, drawn over).
const TERMINAL_EVERY: Duration = Duration::from_millis(250);
/// At most this often elsewhere (a line each: logs and CI output).
const PLAIN_EVERY: Duration = Duration::from_secs(2);
const CLEAR_LINE: &str = "\r\x1b[2K";

/// The progress of the stream of `total` bytes, for stderr. Nothing is shown before the first
/// interval has passed, so a small copy shows none.
pub struct Meter {
    total: u64,
    terminal: bool,
    started: Instant,
    last: Instant,
    drawn: bool,
}

impl Meter {
    pub fn new(total: u64, terminal: bool, now: Instant) -> Meter {
        Meter {
            total,
            terminal,
            started: now,
            last: now,
            drawn: false,
        }
    }

    /// What to write now that `copied` bytes are in, if anything.
    pub fn update(&mut self, copied: u64, now: Instant) -> Option<String> {
        let every = if self.terminal {
            TERMINAL_EVERY
        } else {
            PLAIN_EVERY
        };
        if now.duration_since(self.last) < every {
            return None;
        }
        self.last = now;
        let line = self.line(copied, now);
        if self.terminal {
            self.drawn = true;
            Some(format!("{CLEAR_LINE}{line}"))
        } else {
            Some(format!("{line}\n"))
        }
    }

    /// What to write at the end: on a terminal, the clearing of a drawn line.
    pub fn finish(&mut self) -> Option<String> {
        std::mem::take(&mut self.drawn).then(|| CLEAR_LINE.to_string())
    }

    fn line(&self, copied: u64, now: Instant) -> String {
        let seconds = now.duration_since(self.started).as_secs_f64();
        let percent = match self.total {
            0 => 100,
            total => copied.saturating_mul(100) / total,
        };
        let rate = match seconds > 0.0 {
            true => format!(", {}/s", format_bytes((copied as f64 / seconds) as u64)),
            false => String::new(),
        };
        format!(
            "copied {} of {} ({percent}%){rate}",
            format_bytes(copied),
            format_bytes(self.total)
        )
    }
}

/// The generations a copy holds, in words.
pub fn generations_text(report: &Report) -> String {
    let generations = match report.generations {
        None => return "no pyABC tables (is it a pyABC database?)".into(),
        Some(0) => "no generation stored yet".to_string(),
        Some(1) => "1 generation".to_string(),
        Some(n) => format!("{n} generations"),
    };
    match report.analyses {
        Some(n) if n > 1 => format!("{generations} in {n} analyses"),
        _ => generations,
    }
}

/// A path as one shell word.
fn shell_word(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/-+:@%,=".contains(c));
    match plain {
        true => text.to_string(),
        false => format!("'{}'", text.replace('\'', r"'\''")),
    }
}

/// How to open the pyABC database at `path`: pyABC's `History` and its web server.
pub fn how_to_open(path: &Path) -> String {
    let path = path.display().to_string();
    format!(
        "pyabc.History({:?}) or abc-server-flask {}",
        format!("sqlite:///{path}"),
        shell_word(&path)
    )
}

/// The final line of a copy: what it is, where, and how to open it.
pub fn summary_line(run: &str, report: &Report, output: &Path) -> String {
    format!(
        "copied {} of AbcRun {run} to {}: {}, {}; open it with {}",
        report.name,
        output.display(),
        format_bytes(report.size),
        generations_text(report),
        how_to_open(output)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(generations: Option<u64>, analyses: Option<u64>) -> Report {
        Report {
            name: "gaussian.db".into(),
            size: 262144,
            sha256: String::new(),
            generations,
            analyses,
            restarts: 0,
            rolled_back: false,
            seconds: 0.0,
        }
    }

    #[test]
    fn bytes_read_as_people_say_them() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1024), "1.0 KiB");
        assert_eq!(format_bytes(3000), "2.9 KiB");
        assert_eq!(format_bytes(5 << 20), "5.0 MiB");
        assert_eq!(format_bytes(1288490189), "1.2 GiB");
    }

    #[test]
    fn a_terminal_gets_one_line_drawn_over_at_most_four_times_a_second() {
        let start = Instant::now();
        let mut meter = Meter::new(100 << 20, true, start);
        assert_eq!(
            meter.update(1 << 20, start + Duration::from_millis(100)),
            None
        );
        let line = meter
            .update(10 << 20, start + Duration::from_secs(1))
            .unwrap();
        assert_eq!(
            line,
            "\r\x1b[2Kcopied 10.0 MiB of 100.0 MiB (10%), 10.0 MiB/s"
        );
        assert_eq!(
            meter.update(11 << 20, start + Duration::from_millis(1100)),
            None
        );
        assert!(
            meter
                .update(12 << 20, start + Duration::from_millis(1250))
                .is_some()
        );
        assert_eq!(meter.finish().as_deref(), Some("\r\x1b[2K"));
        assert_eq!(meter.finish(), None);
    }

    #[test]
    fn elsewhere_plain_lines_every_two_seconds_and_nothing_for_a_quick_copy() {
        let start = Instant::now();
        let mut meter = Meter::new(1 << 30, false, start);
        assert_eq!(meter.update(1 << 29, start + Duration::from_secs(1)), None);
        assert_eq!(
            meter
                .update(1 << 30, start + Duration::from_secs(2))
                .as_deref(),
            Some("copied 1.0 GiB of 1.0 GiB (100%), 512.0 MiB/s\n")
        );
        assert_eq!(meter.finish(), None, "no line to clear");
        let mut quick = Meter::new(4096, false, start);
        assert_eq!(quick.update(4096, start + Duration::from_millis(5)), None);
    }

    #[test]
    fn the_final_line_says_where_how_big_how_many_generations_and_how_to_open_it() {
        let line = summary_line(
            "gaussian",
            &report(Some(5), Some(1)),
            Path::new("gaussian.db"),
        );
        assert_eq!(
            line,
            "copied gaussian.db of AbcRun gaussian to gaussian.db: 256.0 KiB, 5 generations; \
             open it with pyabc.History(\"sqlite:///gaussian.db\") or abc-server-flask gaussian.db"
        );
        assert_eq!(
            generations_text(&report(Some(0), Some(1))),
            "no generation stored yet"
        );
        assert_eq!(generations_text(&report(Some(1), None)), "1 generation");
        assert_eq!(
            generations_text(&report(Some(7), Some(2))),
            "7 generations in 2 analyses"
        );
        assert!(generations_text(&report(None, None)).contains("no pyABC tables"));
    }

    #[test]
    fn paths_open_as_written_absolute_or_with_spaces() {
        assert_eq!(
            how_to_open(Path::new("/runs/g.db")),
            "pyabc.History(\"sqlite:////runs/g.db\") or abc-server-flask /runs/g.db"
        );
        assert_eq!(
            how_to_open(Path::new("my runs/it's.db")),
            "pyabc.History(\"sqlite:///my runs/it's.db\") or abc-server-flask 'my runs/it'\\''s.db'"
        );
    }
}
