//! Writes progress, notes and the master's output to the terminal. stdout carries progress (and
//! with `--json` nothing but JSON objects); logs go to stderr through tracing.

use super::progress::{Out, Style};
use serde_json::Value;
use std::io::Write;

/// Owns stdout for the runner's lifetime.
pub struct Printer {
    style: Style,
    /// The live line currently drawn (terminal style), redrawn after anything printed above it.
    live: Option<String>,
}

const CLEAR_LINE: &str = "\r\x1b[2K";

impl Printer {
    pub fn new(style: Style) -> Printer {
        Printer { style, live: None }
    }

    pub fn out(&mut self, out: Out) {
        let mut stdout = std::io::stdout().lock();
        // Write errors (a closed pipe) must not stop the run: its results matter more.
        match out {
            Out::Line(line) => {
                let redraw = self.live.take();
                if redraw.is_some() {
                    let _ = write!(stdout, "{CLEAR_LINE}");
                }
                let _ = writeln!(stdout, "{line}");
                if let Some(live) = redraw {
                    let _ = write!(stdout, "{live}");
                    self.live = Some(live);
                }
            }
            Out::Live(line) if line.is_empty() => {
                if self.live.take().is_some() {
                    let _ = write!(stdout, "{CLEAR_LINE}");
                }
            }
            Out::Live(line) => {
                let _ = write!(stdout, "{CLEAR_LINE}{line}");
                self.live = Some(line);
            }
        }
        let _ = stdout.flush();
    }

    /// A line for people (ignored with `--json`).
    pub fn say(&mut self, text: impl Into<String>) {
        if self.style != Style::Json {
            self.out(Out::Line(text.into()));
        }
    }

    /// A JSON event (ignored without `--json`).
    pub fn event(&mut self, event: Value) {
        if self.style == Style::Json {
            self.out(Out::Line(event.to_string()));
        }
    }

    /// A line the master printed: shown live, prefixed, on stdout (on stderr with `--json`, so
    /// stdout stays machine-readable).
    pub fn master_line(&mut self, line: &str) {
        if self.style == Style::Json {
            eprintln!("master | {line}");
        } else {
            self.out(Out::Line(format!("master | {line}")));
        }
    }

    /// Ends the live line so that what follows starts on a fresh one.
    pub fn finish_live(&mut self) {
        if self.live.take().is_some() {
            let mut stdout = std::io::stdout().lock();
            let _ = write!(stdout, "{CLEAR_LINE}");
            let _ = stdout.flush();
        }
    }
}
